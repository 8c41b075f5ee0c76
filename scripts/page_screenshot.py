#!/usr/bin/env python
"""A screenshot of the service's page with a real model, for the docs (needs Debian's chromium + chromedriver).

    python scripts/page_screenshot.py models/minilm-ner docs/serve/page-minilm-ner.png
"""

from __future__ import annotations

import shutil
import socket
import sys
import tempfile
import threading
import time

import uvicorn
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from earlytag.serve.app import create_app

TEXT = ("Angela Merkel met Emmanuel Macron in Paris on Monday, and the two leaders later flew to Brussels "
        "for talks with the European Commission about Google and Microsoft.")


def main(model: str, out: str, threshold: float = 0.1) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(model), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    with tempfile.TemporaryDirectory() as profile:
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     f"--user-data-dir={profile}", "--window-size=1100,680"):
            opts.add_argument(flag)
        driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
        try:
            driver.get(f"http://127.0.0.1:{port}/")
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
            server.should_exit = True


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
