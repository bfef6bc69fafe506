"""The live dashboard in headless Chromium (Debian's chromium + chromedriver, driven by Selenium):
the page loads, shows the tasks of a running campaign and updates when a result arrives."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.conftest import physflow
from tests.ui.conftest import submit_detached

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="needs Debian's chromium and chromium-driver (scripts/test.sh installs them)")


def _browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def _rows(driver) -> list[tuple[str, str]]:
    """(task, status) of each row, read in one script: the page rewrites its tables on every poll."""
    return [tuple(r) for r in driver.execute_script(
        "return Array.from(document.querySelectorAll('#tasks tbody tr'))"
        ".map(r => [r.dataset.task, r.dataset.status])")]


def _text(driver, element_id: str) -> str:
    return driver.execute_script(f"const e = document.getElementById('{element_id}'); return e ? e.textContent : ''")


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_dashboard_follows_a_running_campaign_in_headless_chromium(tmp_path):
    # One slot and a longer simulated time: results arrive one by one, seconds apart, while the page watches.
    # 20 simulations: far more than it runs before the cancel below, so the cancel always finds it running.
    run = submit_detached(tmp_path, sims=20, slots=1, t_end=0.2)
    server = subprocess.Popen([sys.executable, "-m", "physflow", "dashboard", str(run), "--port", "0",
                               "--poll", "0.3"], stderr=subprocess.PIPE, text=True)
    driver = None
    try:
        url = server.stderr.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url
        state = json.loads(urllib.request.urlopen(url + "api/state", timeout=30).read())
        assert state["state"] == "running" and state["name"] in ("", "heat-ui")
        driver = _browser()
        driver.get(url)
        from selenium.webdriver.common.by import By

        _wait(lambda: _text(driver, "state") == "running" and _rows(driver), 60,
              "the running campaign's tasks on the page")
        assert "physflow: heat-ui" in _text(driver, "title")
        before = sum(s == "finished" for _, s in _rows(driver))
        assert before < 20, "the campaign ended before the page could watch it"
        after = _wait(lambda: (n := sum(s == "finished" for _, s in _rows(driver))) > before and n, 120,
                      "a new result on the page")
        assert after > before
        best = _text(driver, "best")
        assert best.startswith("chi2 = ") and "(t000" in best
        _wait(lambda: driver.find_elements(By.CSS_SELECTOR, "#figures img[alt=objective]"), 30, "the objective figure")
        loaded = driver.execute_script(
            "return Array.from(document.querySelectorAll('#figures img')).every(i => i.complete && i.naturalWidth > 0)")
        assert loaded
        # A report mid-run works too.
        assert physflow("report", str(run)).returncode == 0
        assert physflow("cancel", str(run)).returncode == 0
        _wait(lambda: _text(driver, "state") == "cancelled", 60, "the cancelled state")
        assert physflow("watch", str(run), "--once").returncode == 1  # cancelled: exit 1
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        server.wait(timeout=30)
        if json.loads(physflow("status", str(run), "--json").stdout)["state"] == "running":
            physflow("cancel", str(run))
