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
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="chromium and chromedriver are not installed "
                                                                  "(tests/setup.sh installs them)")


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

    from latentbasis.cli import load_editor
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
        _wait(lambda: "converted to grey" in status() or "directions at" in status(), what="the upload")
        _wait(lambda: "directions at" in status(), what="the directions after the upload")
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
