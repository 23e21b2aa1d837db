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
