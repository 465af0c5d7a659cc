"""The report in a real headless Chromium: it renders, shows the grid, and its column headers sort the rows.

Skipped (with the reason) when no Chromium/Chrome binary is on PATH: `apt-get install chromium` provides one.
The click-to-sort test drives the same binary through playwright and is skipped when playwright is not installed.
"""

from __future__ import annotations

import importlib.util
import re

import numpy as np
import pytest
from PIL import Image

from diffusion_align.evaluate.browser import find_browser, rendered_dom, screenshot

BROWSER = find_browser()
needs_browser = pytest.mark.skipif(BROWSER is None, reason="no Chromium/Chrome on PATH (apt-get install chromium)")
needs_playwright = pytest.mark.skipif(
    importlib.util.find_spec("playwright") is None, reason="playwright is not installed (pip install playwright)"
)


def contains_scaled(screen: np.ndarray, image: np.ndarray, scale: int) -> bool:
    """Whether ``image`` [h, w, 3], upscaled ``scale`` times with nearest neighbours, appears exactly in ``screen``."""
    height, width = image.shape[:2]
    for top, left in np.argwhere((screen == image[0, 0]).all(axis=-1)):
        block = screen[top : top + height * scale : scale, left : left + width * scale : scale]
        if block.shape == image.shape and (block == image).all():
            return True
    return False


@needs_browser
def test_screenshot_shows_the_grid_of_samples(evaluation, tmp_path):
    results, out_dir = evaluation
    shot = screenshot(out_dir / "report.html", tmp_path / "report.png", width=1400, height=1800)
    screen = np.asarray(Image.open(shot).convert("RGB"))
    assert screen.shape == (1800, 1400, 3)
    for model in ("base", "aligned"):  # the first row's images, drawn pixel for pixel at 160 / 32 = 5x
        first = np.asarray(Image.open(results.rows_of(model).iloc[0]["image"]).convert("RGB"))
        assert contains_scaled(screen, first, scale=5), f"{model}'s first sample is not on the screenshot"


@needs_browser
def test_rendered_dom_has_every_sample_image_loaded(evaluation):
    results, out_dir = evaluation
    dom = rendered_dom(out_dir / "report.html")
    assert dom.count('alt="base"') == dom.count('alt="aligned"') == len(results.table) // 2
    assert len(re.findall(r'<table id="samples">', dom)) == 1


@needs_browser
@needs_playwright
def test_clicking_a_difference_header_sorts_the_rows(evaluation):
    from playwright.sync_api import sync_playwright

    results, out_dir = evaluation
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=BROWSER, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto((out_dir / "report.html").resolve().as_uri())
        images = page.locator("#samples img")
        assert images.count() == len(results.table)
        assert all(images.nth(i).evaluate("img => img.complete && img.naturalWidth > 0") for i in range(images.count()))
        header = page.locator("#samples th").nth(6)  # Δ clip, aligned − base
        values = "rows => rows.map(r => parseFloat(r.cells[6].dataset.value))"
        header.click()
        ascending = page.locator("#samples tbody tr").evaluate_all(values)
        header.click()
        descending = page.locator("#samples tbody tr").evaluate_all(values)
        browser.close()
    assert ascending == sorted(ascending) and descending == sorted(ascending, reverse=True)
    differences = results.score_matrix("aligned", "clip") - results.score_matrix("base", "clip")
    assert ascending == pytest.approx(sorted(differences.ravel()))


def test_a_configured_browser_must_exist(monkeypatch):
    monkeypatch.setenv("DIFFALIGN_CHROMIUM", "/nonexistent/chromium")
    with pytest.raises(FileNotFoundError, match="DIFFALIGN_CHROMIUM='/nonexistent/chromium' is not an executable"):
        find_browser()
