"""End to end in a real headless browser (Debian's chromium driven by selenium): open the page, find directions,
move a slider, see the edited image change, export the recipe, save a screenshot.

Needs chromium and chromedriver (tests/setup.sh installs them where it can); skipped, saying why, without them.
LATENTBASIS_SCREENSHOT=path.png keeps the screenshot (the README's picture is made this way).
"""
import os
import shutil
import time
from pathlib import Path

import pytest

pytest.importorskip("gradio")
webdriver = pytest.importorskip("selenium.webdriver")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="chromium and chromedriver are not installed "
                                                                  "(tests/setup.sh installs them)")


def _wait(fn, timeout=90, what="condition"):
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            v = fn()
            if v:
                return v
        except Exception:  # the page is still rendering
            pass
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1300,1700"):
        opts.add_argument(a)
    drv = webdriver.Chrome(service=Service(DRIVER), options=opts)
    yield drv
    drv.quit()


def test_find_slide_export_in_a_browser(browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    from latentbasis.cli import load_editor
    from latentbasis.loading import load_model

    editor = load_editor()
    demo, url = editor.launch(load_model("digits"), block=False)
    d = browser
    try:
        d.get(url)

        def edited_src():
            return d.find_element(By.CSS_SELECTOR, "#edited img").get_attribute("src")

        first = _wait(edited_src, what="the sample on page load")
        d.find_element(By.ID, "find").click()
        _wait(lambda: len(d.find_elements(By.CSS_SELECTOR, "#gallery img")) >= 6, what="the directions gallery")
        rng = _wait(lambda: d.find_element(By.CSS_SELECTOR, "#v1 input[type=range]"), what="slider v1")
        d.execute_script("arguments[0].scrollIntoView({block: 'center'})", rng)
        ActionChains(d).click_and_hold(rng).move_by_offset(rng.size["width"] // 3, 0).release().perform()
        changed = _wait(lambda: (edited_src() != first) and edited_src(), what="the edited image to change")
        assert changed != first
        button = d.find_element(By.ID, "export")
        d.execute_script("arguments[0].scrollIntoView({block: 'center'})", button)
        button.click()
        try:
            _wait(lambda: "recipe.json" in d.find_element(By.ID, "exports").get_attribute("innerHTML"),
                  what="the exported recipe")
        except AssertionError:
            d.save_screenshot("/tmp/fail.png")
            print(d.find_element(By.ID, "exports").get_attribute("outerHTML")[:3000])
            raise
        links = d.find_elements(By.CSS_SELECTOR, "#exports a")
        assert any("recipe.json" in (a.get_attribute("href") or "") for a in links)
        d.execute_script("window.scrollTo(0, 0)")
        shot = Path(os.environ.get("LATENTBASIS_SCREENSHOT") or tmp_path / "app.png")
        assert d.save_screenshot(str(shot)) and shot.stat().st_size > 10000
    finally:
        demo.close()
