"""End to end in a real headless browser (Debian's chromium driven by selenium): open the page, upload an RGB photo
to the grey `digits` model and press Find at once (the click waits for the upload; no error), see every direction
with its caption and the colour legend, move a slider (a quick preview, then the full image), export the recipe,
run a small report, and save screenshots of both tabs.

Needs chromium and chromedriver (tests/setup.sh installs them where it can); skipped, saying why, without them.
LATENTBASIS_SCREENSHOT=path.png keeps the Edit tab's screenshot (the README's picture is made this way), and
path-report.png the report tab's.
"""
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gradio")
webdriver = pytest.importorskip("selenium.webdriver")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="chromium and chromedriver are not installed "
                                                                   "(tests/setup.sh installs them)")]


def _wait(fn, timeout=120, what="condition"):
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            v = fn()
            if v:
                return v
        except Exception:  # the page is still rendering
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1300,1500",
              "--disable-background-networking", "--disable-component-update", "--no-first-run"):
        opts.add_argument(a)
    drv = webdriver.Chrome(service=Service(DRIVER), options=opts)
    yield drv
    drv.quit()


def test_upload_find_slide_export_report_in_a_browser(browser, tmp_path):
    from PIL import Image
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    from latentbasis.app import load_editor
    from latentbasis.loading import load_model

    photo = tmp_path / "photo.png"                     # an RGB picture: a bright stroke on a coloured ground
    a = np.zeros((40, 40, 3), np.uint8)
    a[..., 2] = 90
    a[8:32, 17:23] = (250, 240, 200)
    Image.fromarray(a, "RGB").save(photo)
    editor = load_editor()
    demo, url = editor.launch(load_model("digits"), block=False)
    d = browser
    try:
        d.get(url)

        def edited_src():
            return d.find_element(By.CSS_SELECTOR, "#edited img").get_attribute("src")

        def status():
            return d.find_element(By.ID, "status").text

        _wait(edited_src, what="the sample on page load")
        d.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(photo))
        d.find_element(By.ID, "find").click()                 # while the upload is still being read
        _wait(lambda: "converted to grey" in status() or "directions of h at" in status(), what="the upload")
        _wait(lambda: "directions of h at" in status(), what="the directions after the upload")
        assert "Error" not in status()
        gallery = _wait(lambda: [e for e in d.find_elements(By.CSS_SELECTOR, "#gallery img")] if len(
            d.find_elements(By.CSS_SELECTOR, "#gallery img")) >= 6 else None, what="six directions")
        gal = d.find_element(By.ID, "gallery")
        d.execute_script("arguments[0].scrollIntoView({block: 'start'})", gal)
        view_bottom = d.execute_script("return window.innerHeight")
        for img in gallery[:6]:                               # every picture in view, not behind a scroll bar
            top = d.execute_script("return arguments[0].getBoundingClientRect().bottom", img)
            assert top <= view_bottom + 2
        captions = [e.text for e in d.find_elements(By.CSS_SELECTOR, "#gallery .caption-label")]
        assert len(captions) >= 6 and all("s = " in c for c in captions[:6]), captions
        assert "red" in d.find_element(By.ID, "legend").text
        source = edited_src()
        rng = _wait(lambda: d.find_element(By.CSS_SELECTOR, "#v1 input[type=range]"), what="slider v1")
        d.execute_script("arguments[0].scrollIntoView({block: 'center'})", rng)
        ActionChains(d).click_and_hold(rng).move_by_offset(rng.size["width"] // 3, 0).release().perform()
        _wait(lambda: "Preview" in status() or "Edited" in status(), what="the preview")
        _wait(lambda: "Edited" in status(), what="the full edit")
        assert edited_src() != source
        button = d.find_element(By.ID, "export")
        d.execute_script("arguments[0].scrollIntoView({block: 'center'})", button)
        button.click()
        _wait(lambda: "recipe.json" in d.find_element(By.ID, "exports").get_attribute("innerHTML"),
              what="the exported recipe")
        d.execute_script("window.scrollTo(0, 0)")
        shot = Path(os.environ.get("LATENTBASIS_SCREENSHOT") or tmp_path / "app.png")
        assert d.save_screenshot(str(shot)) and shot.stat().st_size > 10000

        tab = _wait(lambda: [b for b in d.find_elements(By.CSS_SELECTOR, "button[role=tab]")
                             if "report" in b.text.lower()][0], what="the report tab")
        tab.click()
        d.find_element(By.ID, "run-report").click()
        _wait(lambda: "Report written" in status(), timeout=240, what="the report")
        plots = d.find_elements(By.CSS_SELECTOR, "#plots img")
        assert len(plots) >= 5
        width = d.find_element(By.ID, "plots").size["width"]
        assert all(p.size["width"] <= width for p in plots)  # plots fit their tiles
        page = d.page_source                                  # 4 samples x 4 timesteps: judged, one way or another
        assert any(v in page for v in ("holds", "does not hold", "mixed (no clear trend)"))
        report_shot = shot.with_name(shot.stem + "-report.png")
        assert d.save_screenshot(str(report_shot)) and report_shot.stat().st_size > 10000
    finally:
        demo.close()


def _image_at(url: str) -> np.ndarray:
    """The picture a page shows (an <img> src served by the app, or a data: URL) as an array [H, W, C] in [0, 1]."""
    import base64
    import io
    import urllib.request

    from PIL import Image

    if url.startswith("data:"):
        raw = base64.b64decode(url.split(",", 1)[1])
    else:
        with urllib.request.urlopen(url, timeout=30) as r:
            raw = r.read()
    return np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"), np.float64) / 255.0


def test_paint_a_region_find_its_directions_and_slide_in_a_browser(browser, tmp_path):
    """Paint over the shape of the `shapes` sample (found in the shown picture), find the x0 directions of that region
    (null rank 8), move a slider: the shown image changes inside the painted region and hardly outside it (the region
    is the mask the app used, read back from its exported mask.png); carry the edit to other seeds; screenshot."""
    from PIL import Image
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    from latentbasis.app import load_editor
    from latentbasis.loading import load_model

    editor = load_editor()
    demo, url = editor.launch(load_model("shapes"), block=False)
    d = browser
    try:
        d.get(url)

        def edited_src():
            return d.find_element(By.CSS_SELECTOR, "#edited img").get_attribute("src")

        def status():
            return d.find_element(By.ID, "status").text

        _wait(edited_src, what="the sample on page load")
        sample = _image_at(edited_src())
        ys, xs = np.nonzero(np.abs(sample - np.median(sample, (0, 1))).sum(-1) > 0.15)   # the shape, on its ground
        region = d.find_element(By.ID, "region")
        d.execute_script("arguments[0].scrollIntoView({block: 'center'})", region)
        canvas = _wait(lambda: region.find_elements(By.TAG_NAME, "canvas")[-1], what="the painting canvas")
        zoom = _wait(lambda: [float(e.text.rstrip("%")) / 100 for e in region.find_elements(By.XPATH, ".//*")
                              if e.text.endswith("%") and e.text.rstrip("%").isdigit()][0], what="the zoom")
        region.find_element(By.CSS_SELECTOR, "button[aria-label=Brush]").click()
        # paint over the shape (a margin of one brush width): rows of strokes, in the canvas' coordinates (the image
        # sits in its middle at the zoom it shows)
        H, W = sample.shape[:2]
        left, right = (xs.min() - W / 2) * zoom, (xs.max() - W / 2) * zoom
        chain = ActionChains(d).move_to_element_with_offset(canvas, int(left), int((ys.min() - H / 2) * zoom))
        chain.click_and_hold()
        for i, y in enumerate(np.arange(ys.min(), ys.max() + 1, 12)):
            y = int((y - H / 2) * zoom)
            chain.move_to_element_with_offset(canvas, int(left if i % 2 == 0 else right), y)
            chain.move_to_element_with_offset(canvas, int(right if i % 2 == 0 else left), y)
        chain.release().perform()
        x0 = [e for e in d.find_elements(By.CSS_SELECTOR, "#space label") if "x0" in e.text][0]
        x0.click()
        find = d.find_element(By.ID, "find")
        d.execute_script("arguments[0].scrollIntoView({block: 'center'})", find)
        find.click()
        _wait(lambda: "of the painted region" in status(), timeout=240, what="the region's directions")
        assert "Error" not in status()
        before = _image_at(edited_src())
        rng = _wait(lambda: d.find_element(By.CSS_SELECTOR, "#v1 input[type=range]"), what="slider v1")
        d.execute_script("arguments[0].scrollIntoView({block: 'center'})", rng)
        ActionChains(d).click_and_hold(rng).move_by_offset(rng.size["width"] // 3, 0).release().perform()
        _wait(lambda: "Edited" in status(), what="the full edit")
        after = _image_at(edited_src())
        assert after.shape == before.shape

        button = d.find_element(By.ID, "export")
        d.execute_script("arguments[0].scrollIntoView({block: 'center'})", button)
        button.click()
        link = _wait(lambda: [a.get_attribute("href") for a in d.find_elements(By.CSS_SELECTOR, "#exports a")
                              if "mask.png" in (a.get_attribute("href") or "")][0], what="the exported mask")
        mask = _image_at(link)[..., 0] > 0.5
        assert 0 < mask.mean() < 0.5                           # the stroke, not nothing and not everything
        H, W = after.shape[:2]
        shown = np.asarray(Image.fromarray(mask).resize((W, H), Image.NEAREST))
        change = ((after - before) ** 2).sum(-1)
        inside = change[shown].sum() / change.sum()
        per_pixel = change[shown].mean() / max(change[~shown].mean(), 1e-12)
        assert change.sum() > 1.0, "the slider did not change the image"
        assert inside > 0.8 and per_pixel > 10, (inside, per_pixel)

        others = d.find_element(By.ID, "others-btn")
        d.execute_script("arguments[0].scrollIntoView({block: 'center'})", others)
        others.click()
        _wait(lambda: len(d.find_elements(By.CSS_SELECTOR, "#others img")) >= 3, timeout=240,
              what="the edit carried to other seeds")
        shot = Path(os.environ.get("LATENTBASIS_SCREENSHOT_REGION") or tmp_path / "region.png")
        d.execute_script("window.scrollTo(0, 0)")
        size = d.get_window_size()
        d.set_window_size(size["width"], min(4000, d.execute_script("return document.body.scrollHeight") + 150))
        try:                                                   # the whole page in one picture
            assert d.save_screenshot(str(shot)) and shot.stat().st_size > 10000
        finally:
            d.set_window_size(size["width"], size["height"])
        print(f"painted {mask.sum()} pixels; {inside:.1%} of the change inside, {per_pixel:.0f}x per pixel")
    finally:
        demo.close()
