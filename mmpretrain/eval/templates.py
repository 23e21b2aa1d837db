"""Named prompt-template sets for zero-shot classification, kept as plain data.

Each template holds one ``{}`` placeholder for the class name (``{c}`` works too, as clip_benchmark writes it).
Ensembling several phrasings per class is CLIP's cheap, reliable gain over a single prompt; the demo sets
(digits, compositional shapes) get their own phrasings because "a photo of a 7" says little about a digit.
"""

from __future__ import annotations

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "digits": (
        "a handwritten {}.",
        "the number {}.",
        "a photo of the digit {}.",
        "the digit {} written by hand.",
    ),
    # Colour and shape are read out separately from the compositional shapes demo data.
    "shapes-colour": (
        "a {} shape.",
        "a small {} object.",
        "a large {} object.",
        "something {}.",
    ),
    "shapes-shape": (
        "a {}.",
        "a small {}.",
        "a large {}.",
        "a picture of a {}.",
    ),
    # Audio zero-shot (LAION-CLAP's prompt is "This is a sound of {}.")
    "sounds": (
        "this is a sound of {}.",
        "the sound of {}.",
        "a recording of {}.",
        "{} can be heard.",
    ),
    "generic": (
        "a photo of a {}.",
        "a blurry photo of a {}.",
        "a close-up photo of a {}.",
        "a photo of the small {}.",
        "a photo of the large {}.",
        "a drawing of a {}.",
    ),
    # Standard benchmark families (docs/BENCHMARKING.md, "Dataset formats", says which set suits which dataset).
    # Our own short phrasings: a few per family, each naming what kind of picture it is.
    "photo": (              # the default for everyday objects (CIFAR, STL-10, ImageNet-style sets)
        "a photo of a {}.",
        "a picture of the {}.",
        "an image showing a {}.",
        "a low-resolution photo of a {}.",
        "a cropped photo of the {}.",
    ),
    "house-numbers": (      # SVHN: digits on buildings
        "the house number {}.",
        "a street sign showing the number {}.",
        "the digit {} on a wall.",
        "a photo of the number {}.",
    ),
    "clothing": (           # Fashion-MNIST
        "a photo of a {}, a piece of clothing.",
        "a grayscale picture of a {}.",
        "a product photo of a {}.",
        "a {} on a plain background.",
    ),
    "textures": (           # DTD
        "a {} texture.",
        "a close-up of a {} surface.",
        "a {} pattern.",
        "a material that looks {}.",
    ),
    "satellite": (          # EuroSAT, RESISC45
        "a satellite image of {}.",
        "an aerial photo of {}.",
        "{}, seen from above.",
        "a satellite view showing {}.",
    ),
    "traffic-signs": (      # GTSRB
        "a road sign: {}.",
        "a photo of the traffic sign \"{}\".",
        "a close-up of a {} sign.",
        "a street sign meaning {}.",
    ),
    "food": (               # Food-101
        "a photo of {}, a dish.",
        "a plate of {}.",
        "{} served on a table.",
        "a close-up of {}, a kind of food.",
    ),
    "pets": (               # Oxford-IIIT Pet
        "a photo of a {}, a breed of pet.",
        "a {} at home.",
        "a close-up of a {}, a cat or dog breed.",
    ),
    "flowers": (            # Flowers-102
        "a photo of a {}, a kind of flower.",
        "a {} in bloom.",
        "a close-up of a {} blossom.",
    ),
    "aircraft": (           # FGVC-Aircraft
        "a photo of a {}, a model of aircraft.",
        "a {} on the runway.",
        "a {} flying in the sky.",
    ),
    "cars": (               # Stanford Cars
        "a photo of a {}, a model of car.",
        "a {} parked on the street.",
        "a {} on the road.",
    ),
    "scenes": (             # SUN397
        "a photo of a {}.",
        "a view of a {}.",
        "a picture taken in a {}.",
        "a scene: {}.",
    ),
    "countries": (          # Country211 (geolocation)
        "a photo taken in {}.",
        "a picture from {}.",
        "a street scene in {}.",
        "a travel photo from {}.",
    ),
    "emotions": (           # FER2013
        "a face that looks {}.",
        "a {} facial expression.",
        "a photo of someone looking {}.",
        "a person who seems {}.",
    ),
    "sentiment": (          # Rendered SST2
        "a {} movie review.",
        "a review of a film that is {}.",
        "text giving a {} opinion.",
    ),
}


def get_templates(name: str) -> list[str]:
    """Return a fresh copy of the named template set; unknown names raise KeyError listing the known ones."""
    try:
        return list(TEMPLATE_SETS[name])
    except KeyError:
        known = ", ".join(sorted(TEMPLATE_SETS))
        raise KeyError(f"unknown template set {name!r}; known sets: {known}") from None


def fill_template(template: str, classname: str) -> str:
    """Put a class name into a template written with either ``{}`` or ``{c}``."""
    return template.format(classname, c=classname)
