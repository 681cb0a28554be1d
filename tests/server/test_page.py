"""The web page in a real headless Chromium (Debian's `chromium` and `chromium-driver`, driven by Selenium; nothing
is downloaded): generate with the chain of thought and watch the progress, edit an uploaded image, ask about it,
replay a result from the gallery. INTERNVLU_SCREENSHOT_DIR=docs/ writes the README's screenshots there."""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path

import pytest

from .helpers import png



# About 10 s: a browser start and five images; skipped where there is no Chromium (CI).
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
WAIT_S = 120


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("no Chromium here: apt-get install chromium chromium-driver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,860",
                     "--force-device-scale-factor=1"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = os.environ.get("INTERNVLU_SCREENSHOT_DIR")
    return Path(folder) if folder else tmp_path_factory.mktemp("screenshots")


def test_generate_edit_ask_and_replay_in_the_page(browser, server, shots, tmp_path):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, WAIT_S, poll_frequency=0.05)
    find = lambda css: browser.find_element(By.CSS_SELECTOR, css)  # noqa: E731
    cards = lambda: browser.find_elements(By.CSS_SELECTOR, "#gallery .card")  # noqa: E731

    def fill(css: str, text: str) -> None:
        find(css).clear()
        find(css).send_keys(text)

    def finished(count: int) -> None:
        try:
            wait.until(lambda _: len(cards()) == count and find("#status").text in ("done", "failed", "cancelled"))
        except TimeoutException:
            pytest.fail(f"{len(cards())} cards (not {count}), status {find('#status').text!r}, "
                        f"error {find('#error').text!r}")
        assert find("#status").text == "done", find("#error").text

    browser.get(server.url + "/")
    wait.until(lambda _: find("#model").text == "model: nano")

    # Generate, thinking first: the thoughts stream in, the bar moves, the card arrives with its recipe.
    fill("#prompt", "a red circle on a white background")
    fill("#size", "64x64")
    fill("#steps", "120")
    fill("#seed", "7")
    find("#cot").click()
    find("#go").click()
    wait.until(lambda _: 0 < float(find("#progress").get_attribute("value")) < 1)
    assert find("#thoughts").text.strip()
    browser.save_screenshot(str(shots / "serve-progress.png"))
    finished(1)
    first = cards()[0]
    assert first.find_element(By.CSS_SELECTOR, "img").get_attribute("src").startswith("blob:")
    assert '"seed": 7' in first.find_element(By.CSS_SELECTOR, ".recipe").get_attribute("textContent")
    browser.save_screenshot(str(shots / "serve-generate.png"))

    # Edit an uploaded image (the file input behind the drop zone).
    source = tmp_path / "blue.png"
    source.write_bytes(png((40, 60, 220)))
    find("[data-tab=edit]").click()
    find("#file").send_keys(str(source))
    wait.until(lambda _: len(browser.find_elements(By.CSS_SELECTOR, "#thumbs img")) == 1)
    fill("#prompt", "make the background yellow")
    fill("#steps", "20")
    find("#cot").click()
    find("#go").click()
    finished(2)
    assert '"command": "edit"' in cards()[0].find_element(By.CSS_SELECTOR, ".recipe").get_attribute("textContent")
    browser.save_screenshot(str(shots / "serve-edit.png"))

    # Ask about it and about a second image dropped on the drop zone (a real drop event carrying a file).
    find("[data-tab=ask]").click()
    browser.execute_script("""
        const bytes = Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0));
        const dropped = new DataTransfer();
        dropped.items.add(new File([bytes], "red.png", {type: "image/png"}));
        document.getElementById("drop").dispatchEvent(new DragEvent("drop", {dataTransfer: dropped, bubbles: true}));
    """, base64.b64encode(png((220, 20, 20))).decode())
    wait.until(lambda _: len(browser.find_elements(By.CSS_SELECTOR, "#thumbs img")) == 2)
    fill("#prompt", "what colour is the image?")
    find("#go").click()
    finished(3)
    answer = cards()[0].find_element(By.CSS_SELECTOR, ".answer").text
    assert answer.strip()
    browser.save_screenshot(str(shots / "serve-ask.png"))

    # Replay the first image from the gallery: the same recipe, so the same bytes, in a new file.
    cards()[-1].find_element(By.CSS_SELECTOR, ".replay").click()
    finished(4)
    original, replayed = (Path(card.find_element(By.CSS_SELECTOR, ".where").text) for card in (cards()[-1], cards()[0]))
    assert original != replayed and replayed.read_bytes() == original.read_bytes()
