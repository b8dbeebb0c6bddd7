"""The try-a-voice page at / in a real headless browser (Debian's chromium through selenium and chromedriver).

Nothing is installed at run time: without /usr/bin/chromium and /usr/bin/chromedriver (script/setup --dev
installs them where apt is available) the test is skipped and says why.
"""

from __future__ import annotations

import shutil
import tempfile

import pytest
from test_http_api import API_KEY, FRAMES, SAMPLES_PER_FRAME, start_http_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

pytestmark = pytest.mark.skipif(
    not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)),
    reason="no chromium and chromedriver here (script/setup --dev installs them with apt where it can)",
)


@pytest.fixture(scope="module")
def api(tiny_models):
    yield from start_http_server(tiny_models["custom_voice"], "--http-api-key", API_KEY)


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--autoplay-policy=no-user-gesture-required",
    ):
        options.add_argument(flag)
    with tempfile.TemporaryDirectory() as profile:
        options.add_argument(f"--user-data-dir={profile}")
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        try:
            yield driver
        finally:
            driver.quit()


def test_the_page_lists_voices_and_streams_speech(api, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(api.base_url + "/")
    status = browser.find_element(By.ID, "status")
    WebDriverWait(browser, 10).until(
        ready.text_to_be_present_in_element((By.ID, "status"), "Cannot list voices")
    )
    key = browser.find_element(By.ID, "key")
    key.send_keys(API_KEY)
    browser.execute_script("arguments[0].dispatchEvent(new Event('change'))", key)
    WebDriverWait(browser, 10).until(ready.text_to_be_present_in_element((By.ID, "status"), "voices ready"))
    voices = Select(browser.find_element(By.ID, "voice"))
    assert "ryan" in [option.get_attribute("value") for option in voices.options]
    voices.select_by_value("ryan")
    text = browser.find_element(By.ID, "text")
    text.clear()
    text.send_keys("Good morning. The coffee is ready.")
    browser.find_element(By.ID, "speak").click()
    WebDriverWait(browser, 120).until(ready.text_to_be_present_in_element((By.ID, "status"), "Done"))
    assert "first audio after" in status.text, status.text
    # Two sentences of --max-frames frames each reached the page's player, sample for sample.
    assert status.get_attribute("data-samples") == str(2 * FRAMES * SAMPLES_PER_FRAME)
