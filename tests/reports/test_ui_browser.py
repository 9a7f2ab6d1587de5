"""bench ui end to end: start it on a free port over a store with runs, open the experiment page in headless
Chromium, find the run names in the rendered page, stop it with Ctrl-C (SIGINT) and check the server is gone.

Needs Chromium (``apt-get install -y chromium chromium-driver``); skipped, saying so, only where it is absent.
With selenium and chromedriver the parent run is expanded in the runs table and the child run names are read
there; without them, ``chromium --dump-dom`` renders the experiment page (the study's run and its run count)
and each run's page (its name).
"""

from __future__ import annotations

import html
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from .conftest import log_trials

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"),
                             shutil.which("google-chrome")) if p), None)
CHROMEDRIVER = shutil.which("chromedriver") or next(
    (p for p in ("/usr/lib/chromium/chromedriver", "/usr/bin/chromedriver") if os.path.exists(p)), None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1600,1000"]
STUDY = "ui-e2e"
LABELS = ("zebra-softmax", "quokka-cosface")


def _default_sigint() -> None:
    # pytest started in the background (`make test &`, CI runners) has SIGINT ignored; the child would inherit
    # that and never see our Ctrl-C, as a terminal's bench ui would
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start_ui(cwd: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "bench", "ui", "--study", STUDY, "--port", "0"], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=_default_sigint)
    deadline = time.monotonic() + 180
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("MLflow UI: "):
            return proc, line.split()[2]
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"bench ui printed no address; stderr:\n{proc.stderr.read() if proc.stderr else ''}")


def _visible_text_selenium(url: str, expected: list[str]) -> str:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(url)
        body = ""
        deadline = time.monotonic() + 90
        expanded = False
        while time.monotonic() < deadline:
            body = driver.find_element(By.TAG_NAME, "body").text
            if all(name in body for name in expected):
                return body
            if not expanded and STUDY in body:
                # the child runs are nested under the study's parent run: open it with its expander button
                for button in driver.find_elements(By.CSS_SELECTOR, "[role=gridcell][col-id*='Run Name'] button"):
                    button.click()
                    expanded = True
            time.sleep(0.5)
        return body
    finally:
        driver.quit()


def _dump_dom(url: str) -> str:
    """The page's visible text after the React app rendered (scripts, styles and tags dropped)."""
    out = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}",
                          "--virtual-time-budget=15000", "--dump-dom", url],
                         capture_output=True, text=True, timeout=120)
    text = re.sub(r"<(script|style)\b.*?</\1>", " ", out.stdout, flags=re.S)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", text)).split())


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install -y chromium "
                                             "chromium-driver); .ci/run installs it")
def test_bench_ui_serves_the_experiment_page_with_the_run_names(in_tmp):
    _, ids = log_trials(f"sqlite:///{in_tmp / 'mlflow.db'}", STUDY, [
        ({"loss": LABELS[0]}, 0, "finished", [{"test_acc": 0.9}], {"loss": "softmax"}),
        ({"loss": LABELS[1]}, 0, "finished", [{"test_acc": 0.95}], {"loss": "cosface"}),
    ])
    names = [f"{label} seed=0" for label in LABELS]
    proc, url = _start_ui(in_tmp)
    try:
        from mlflow.tracking import MlflowClient

        experiment = MlflowClient(f"sqlite:///{in_tmp / 'mlflow.db'}").get_experiment_by_name(STUDY)
        assert url.startswith("http://127.0.0.1:") and url.endswith(f"/#/experiments/{experiment.experiment_id}/runs")
        try:
            import selenium  # noqa: F401

            use_selenium = CHROMEDRIVER is not None
        except ImportError:
            use_selenium = False
        if use_selenium:
            text = _visible_text_selenium(url, [STUDY, *names])
            for name in [STUDY, *names]:
                assert name in text, f"{name!r} not in the rendered experiment page:\n{text[:3000]}"
        else:
            page = _dump_dom(url)
            assert STUDY in page and "3 matching runs" in page, page[:3000]
            base = url.split("/#/")[0]
            for run_id, name in zip(ids, names, strict=True):
                page = _dump_dom(f"{base}/#/experiments/{experiment.experiment_id}/runs/{run_id}")
                assert name in page, f"{name!r} not in the rendered run page"
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        try:  # bench ui allows the server 10 s for a graceful exit, then kills it; 60 s leaves room on a loaded CI box
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            raise AssertionError(f"bench ui still running 60 s after Ctrl-C; its stderr:\n{err[-3000:]}") from None
    assert proc.returncode == 0 and "stopped" in err
    port = int(url.split(":")[2].split("/")[0])
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "the MLflow server still answers after Ctrl-C"
