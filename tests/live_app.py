"""The app as a browser sees it: a real `streamlit run app.py` on a free loopback port against a prepared
database, and helpers for driving Debian's headless Chromium through Playwright (no browser download).

Used by the browser tests (tests/test_browser_*.py); the `browser` fixture is in conftest.py.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
# The marks of a browser test module.
BROWSER_TEST = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                                                     "(apt-get install chromium; .ci/run installs it)"),
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def streamlit_server(db_path: Path, log_path: Path, port: int | None = None,
                     env: dict[str, str] | None = None) -> Iterator[str]:
    """`streamlit run app.py` serving `db_path` on `port` (a free loopback port unless given, as a
    restarted server is), with `env` added to its environment: its URL, once it answers."""
    port = port or free_port()
    log = log_path.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.address", "127.0.0.1", "--server.port",
         str(port), "--server.headless", "true", "--server.fileWatcherType", "none",
         "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env={**os.environ, "ROCORE_DB": str(db_path), **(env or {})}, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/_stcore/health", timeout=1)
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"streamlit did not start: {log_path.read_text()}")
                time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()
        # Captured output is shown only when the test fails: then the server's side of the story is there.
        print("streamlit log:", log_path.read_text(), sep="\n")


def sign_in(page, url: str, name: str, code: str) -> None:
    page.goto(url)
    page.get_by_label("Reviewer").fill(name)
    page.get_by_label("Access code").fill(code)
    page.get_by_role("button", name="Sign in").click()


def settle(page, heading: str) -> None:
    """Wait for `heading` and for the script run that shows it to finish, so no element is stale."""
    page.get_by_role("heading", name=heading).wait_for(timeout=30_000)
    page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for(timeout=30_000)


def choose(page, group: str, option: str) -> None:
    page.get_by_role("radiogroup", name=group).get_by_text(option, exact=True).click()


@contextlib.contextmanager
def page_shown_on_failure(page):
    """On a failure, print what the browser showed at that moment."""
    try:
        yield
    except Exception:
        print(f"page at failure ({page.url}):", page.inner_text("body"), sep="\n")
        raise
