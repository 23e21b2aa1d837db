"""The page as a person sees it: opened from disk in headless Chromium (Debian's `chromium`, driven by playwright),
every image loads, the plots and the gallery are on screen, and the browser reports no error or failed request.

`.ci/run` installs chromium when it is absent; elsewhere the test skips, saying what is missing. Playwright drives
the system browser (`executable_path`): `playwright install` downloads its own builds, which CI does not need."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


def _chromium() -> str:
    path = os.environ.get("MMPRETRAIN_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.skip("no Chromium: `apt-get install chromium` (Debian; .ci/run installs it) or set MMPRETRAIN_CHROMIUM")
    return path


def test_the_page_renders_in_chromium_with_its_plots_and_gallery(built_report: Path, tmp_path: Path):
    chromium = _chromium()
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -e '.[test]'")
    problems: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
                    if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url} ({r.failure})"))
            page.goto(built_report.resolve().as_uri(), wait_until="load")
            images = page.evaluate("""() => Array.from(document.images).map(
                image => ({src: image.getAttribute('src'), complete: image.complete, width: image.naturalWidth}))""")
            visible = {selector: page.locator(selector).evaluate_all(
                "elements => elements.filter(e => e.getBoundingClientRect().width > 0 && "
                "getComputedStyle(e).visibility !== 'hidden').length")
                for selector in (".training-curves img", ".eval-curves img", ".heatmap img", "table.heat td",
                                 ".confusion img", ".gallery.image .hit img", ".gallery .hit.correct img",
                                 ".gallery.audio li.clip", ".gallery.audio li.clip.correct")}
            page.locator(".gallery.image").first.scroll_into_view_if_needed()
            gallery_on_screen = page.locator(".gallery.image .hit img").first.is_visible()
            screenshot = tmp_path / "report.png"
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()

    assert problems == []
    assert images and [image for image in images if not (image["complete"] and image["width"] > 0)] == []
    assert visible[".training-curves img"] == 5 and visible[".eval-curves img"] == 2
    assert visible[".heatmap img"] == 1 and visible["table.heat td"] > 0 and visible[".confusion img"] == 6
    assert visible[".gallery.image .hit img"] >= 3 * 4 * 5 and visible[".gallery .hit.correct img"] >= 3 * 4
    assert visible[".gallery.audio li.clip"] == 10 and visible[".gallery.audio li.clip.correct"] == 4
    assert gallery_on_screen
    # A real picture of a long page: large, and far from one flat colour.
    assert screenshot.stat().st_size > 100_000
    with Image.open(screenshot) as shot:
        assert shot.width == 1280 and shot.height > 3000
        colours = shot.convert("RGB").resize((320, shot.height // 4)).getcolors(maxcolors=1 << 16)
        assert colours is None or len(colours) > 200
