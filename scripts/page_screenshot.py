#!/usr/bin/env python
"""A screenshot of the service's page with a real model, for the docs (needs Debian's chromium + chromedriver).

    python scripts/page_screenshot.py models/minilm-ner docs/serve/page-minilm-ner.png
"""

from __future__ import annotations

import shutil
import sys
import tempfile

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from earlytag.serve.app import create_app
from earlytag.serve.loadtest import serve_in_thread

TEXT = ("Angela Merkel met Emmanuel Macron in Paris on Monday, and the two leaders later flew to Brussels "
        "for talks with the European Commission about Google and Microsoft.")


def main(model: str, out: str, threshold: float = 0.1) -> None:
    with serve_in_thread(create_app(model)) as url:
        screenshot(url, out, threshold)


def screenshot(url: str, out: str, threshold: float) -> None:
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    with tempfile.TemporaryDirectory() as profile:
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     f"--user-data-dir={profile}", "--window-size=1100,680"):
            opts.add_argument(flag)
        driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
        try:
            driver.get(url + "/")
            wait = WebDriverWait(driver, 60)
            wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")
            box = driver.find_element(By.ID, "text")
            box.clear()
            box.send_keys(TEXT)
            Select(driver.find_element(By.ID, "policy")).select_by_value("token")
            driver.execute_script(f"const s = document.getElementById('speed'); s.value = {threshold}; "
                                  "s.dispatchEvent(new Event('input'));")
            driver.find_element(By.ID, "tag-button").click()
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#output .token"))
            driver.save_screenshot(out)
        finally:
            driver.quit()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
