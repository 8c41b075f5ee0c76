"""The page at / in a real browser: Debian's chromium + chromedriver (headless), driven by selenium."""

from __future__ import annotations

import shutil

import pytest

from .conftest import missing, need_module

selenium = need_module("selenium")
need_module("uvicorn")

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

from earlytag import Tagger  # noqa: E402
from earlytag.serve.app import create_app  # noqa: E402
from earlytag.serve.loadtest import serve_in_thread  # noqa: E402

from .conftest import tiny_model  # noqa: E402

pytestmark = pytest.mark.browser
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def server(tmp_path_factory, tokenizer):
    model_dir = tmp_path_factory.mktemp("browser") / "model"
    torch_model = tiny_model("bert", labels=("O", "B-PER", "I-PER", "B-LOC", "I-LOC"), seed=5)
    # make the tiny model predict entities (bias towards B-LOC) and be sure of some words early
    import torch

    with torch.no_grad():
        for head in torch_model.heads:
            head.linear.bias[3] += 1.0
        torch_model.heads[0].linear.weight.mul_(40.0)
    Tagger(torch_model, tokenizer).save_pretrained(model_dir)
    with serve_in_thread(create_app(str(model_dir))) as url:
        yield url


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM and CHROMEDRIVER):
        missing("needs Debian's chromium and chromium-driver (apt install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}", "--window-size=1200,900"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    yield driver
    driver.quit()


def test_page_tags_text_highlights_spans_and_shades_exit_layers(server, browser, tmp_path):
    browser.get(server + "/")
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")
    assert "3 layers" in browser.find_element(By.ID, "model-info").text

    text = browser.find_element(By.ID, "text")
    text.clear()
    text.send_keys("Angela Merkel flew from Berlin to Paris on Monday.")
    Select(browser.find_element(By.ID, "policy")).select_by_value("token")
    browser.execute_script("const s = document.getElementById('speed'); s.value = 0.3; s.dispatchEvent(new Event('input'));")
    browser.find_element(By.ID, "tag-button").click()

    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#output .token"))
    tokens = browser.find_elements(By.CSS_SELECTOR, "#output .token")
    assert [t.text for t in tokens][:3] == ["Angela", "Merkel", "flew"]
    layers = {int(t.get_attribute("data-exit-layer")) for t in tokens}
    assert layers <= {1, 2, 3} and len(layers) > 1  # words exit at different layers
    shades = {t.value_of_css_property("background-color") for t in tokens}
    assert len(shades) == len(layers)  # one shade per exit layer
    entities = browser.find_elements(By.CSS_SELECTOR, "#output .entity")
    assert entities, "no highlighted entity spans"
    assert all(e.get_attribute("data-label") in ("PER", "LOC") for e in entities)
    stats = browser.find_element(By.ID, "stats").text
    assert "mean exit layer" in stats and "FLOPs speed-up" in stats
    assert browser.find_element(By.ID, "error").text == ""

    shot = tmp_path / "page.png"  # kept under the test's tmp dir
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 5000


def test_page_shows_service_errors(server, browser):
    browser.get(server + "/")
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")
    browser.execute_script("document.getElementById('text').value = 'x'.repeat(25000);")  # over the limit
    browser.find_element(By.ID, "tag-button").click()
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "error").text)
    assert "characters" in browser.find_element(By.ID, "error").text


def test_page_highlights_the_right_text_after_emoji(server, browser):
    """Offsets are code points; the page must not slice UTF-16 units (an emoji is two of them)."""
    import httpx

    text = "I 😀 love 🇫🇷 Paris and 𝔘nicode Berlin 😀."
    browser.get(server + "/")
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")
    browser.execute_script("document.getElementById('text').value = arguments[0];", text)  # send_keys: BMP only
    Select(browser.find_element(By.ID, "policy")).select_by_value("none")
    browser.find_element(By.ID, "tag-button").click()
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#output .token"))
    shown = [t.text for t in browser.find_elements(By.CSS_SELECTOR, "#output .token")]
    doc = httpx.post(server + "/predict", json={"texts": [text], "exit": {"policy": "none"}}).json()["results"][0]
    assert shown == [t["text"] for t in doc["tokens"]]
    assert "Paris" in shown and "Berlin" in shown
    rendered = browser.execute_script("const d = document.querySelector('#output .document').cloneNode(true);"
                                      "d.querySelectorAll('.label').forEach((e) => e.remove()); return d.textContent;")
    assert rendered == text  # gaps between the tokens are the right characters too


def test_page_shows_chinese_words_and_mixed_script(e5_encoder_dir, tmp_path_factory, browser):
    """A segmenter (characters, B/M/E/S) with the XLM-R tokenizer: every character shown once, the text intact
    around emoji and Latin words, and a rule before each word the service returned."""
    import httpx
    import torch
    from transformers import AutoTokenizer

    from earlytag.model.config import TaggerConfig
    from earlytag.model.tagger import EarlyExitTagger

    from .conftest import tiny_config

    model_dir = tmp_path_factory.mktemp("browser-cws") / "model"
    torch.manual_seed(3)
    model = EarlyExitTagger(TaggerConfig(labels=["B", "E", "M", "S"], task="cws", word_splitter="chars"),
                            tiny_config("bert", vocab_size=250037)).eval()
    Tagger(model, AutoTokenizer.from_pretrained(str(e5_encoder_dir))).save_pretrained(model_dir)
    text = "2026年，北京大学的Angela去了Paris 😀，见到李明。"
    with serve_in_thread(create_app(str(model_dir))) as url:
        browser.get(url + "/")
        WebDriverWait(browser, 30).until(
            lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")
        browser.execute_script("document.getElementById('text').value = arguments[0];", text)
        Select(browser.find_element(By.ID, "policy")).select_by_value("none")
        browser.find_element(By.ID, "tag-button").click()
        WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#output .token"))
        shown = [t.text for t in browser.find_elements(By.CSS_SELECTOR, "#output .token")]
        starts = len(browser.find_elements(By.CSS_SELECTOR, "#output .token.word-start"))
        rendered = browser.execute_script("return document.querySelector('#output .document').textContent;")
        doc = httpx.post(url + "/predict", json={"texts": [text], "exit": {"policy": "none"}}).json()["results"][0]
    assert shown == [c for c in text if not c.isspace()]
    assert rendered == text
    assert len(doc["words"]) > 1 and starts == len(doc["words"]) - 1
