"""Prompt flow's chat page (`python -m flows.chat_page`, i.e. `pf flow test --ui`) in a real browser.

Everything is real: the tiny model from `training.tiny_model`, served by `python -m deployment.serve`
on 127.0.0.1; the phi_endpoint connection written by `python -m deployment.connection` into a
Prompt flow home of the test's own; the chat page and its serve app started the documented way;
headless Chromium (Debian's `chromium` + `chromium-driver`, or an installed Google Chrome +
chromedriver as on GitHub's Ubuntu runners) driven by selenium. The test types a question into the
page and reads the answer the page shows; with greedy decoding (temperature 0) it must be the very
answer the endpoint gives the same question.

With no browser and driver on the machine the test is skipped, and `-ra` prints why.
Set CHAT_PAGE_SCREENSHOT=docs/chat-page.png to refresh the README's screenshot.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests

from common.pf_settings import OFFLINE_ENV
from flows.chat.phi_client import EndpointError, PhiClient
from common import processes
from common.processes import free_port, stop_group

QUESTION = "Who founded Microsoft?"
KEY = "local-test-key"  # the local server checks no key; the connection needs one
PARAMS = {"max_tokens": 12, "temperature": 0.0}  # greedy: the page's answer is reproducible
# The connection addresses the local server as the project writes it: its base URL, OpenAI API.
ENDPOINT_API: str | None = "openai"
BROWSER_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
    "--window-size=1100,720",
]
PENDING = "Generating chat output for you"  # the page's placeholder while the flow runs
URL_LINE = re.compile(r"Chat page URL will be available after service is started: (\S+)")


def find_browser() -> tuple[str, str] | str:
    """(browser binary, chromedriver) or the reason there is none.

    Debian's chromium + chromium-driver, else Google Chrome with the chromedriver that GitHub's Ubuntu
    runners point $CHROMEWEBDRIVER at (their `chromium-browser` is a snap, which chromedriver cannot drive).
    """
    binary = next((shutil.which(n) for n in ("chromium", "google-chrome", "google-chrome-stable") if shutil.which(n)), None)
    webdriver_dir = os.environ.get("CHROMEWEBDRIVER", "")
    driver = next(
        (p for p in (os.path.join(webdriver_dir, "chromedriver") if webdriver_dir else "", shutil.which("chromedriver") or "")
         if p and os.access(p, os.X_OK)),
        None,
    )
    if binary and driver:
        return binary, driver
    missing = " and ".join(m for m, found in (("a browser", binary), ("chromedriver", driver)) if not found)
    return (
        f"no headless browser for the chat page test ({missing} not found): "
        "`apt-get install chromium chromium-driver` (what .ci/run does), or Google Chrome + chromedriver"
    )


def endpoint_client(base: str, **kwargs) -> PhiClient:
    """The client the flow builds from the connection this test writes."""
    if ENDPOINT_API:
        return PhiClient(base, KEY, api=ENDPOINT_API, **kwargs)
    return PhiClient(f"{base}/score", KEY, **kwargs)


def start(cmd: list[str], log: Path, env: dict[str, str], cwd: Path) -> subprocess.Popen:
    """A child in its own process group (so the whole tree can be stopped), output to `log`."""
    return processes.start(cmd, log, cwd=cwd, env=env)[0]


def stop(proc: subprocess.Popen) -> None:
    stop_group(proc, interrupt_first=True)


def wait_for(what: str, ready, proc: subprocess.Popen, log: Path, timeout: float = 240):
    """Poll `ready()` until it returns something truthy; fail with the log when the process dies or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        result = ready()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not ready after {timeout:.0f} s:\n{log.read_text()[-4000:]}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def browser() -> tuple[str, str]:
    found = find_browser()
    if isinstance(found, str):
        pytest.skip(found)
    pytest.importorskip("selenium", reason="selenium is not installed: `make setup` installs the dev extra")
    return found


@pytest.fixture(scope="module")
def local_endpoint(browser, tiny_model_dir: Path, tmp_path_factory) -> Iterator[str]:
    """`python -m deployment.serve` on the tiny model; yields its base URL once it answers a chat."""
    port = free_port()
    log = tmp_path_factory.mktemp("endpoint") / "serve.log"
    proc = start([sys.executable, "-m", "deployment.serve", "--model-dir", str(tiny_model_dir), "--port", str(port)],
                 log, dict(os.environ), Path.cwd())
    base = f"http://127.0.0.1:{port}"
    client = endpoint_client(base, max_retries=0, timeout=60)

    def answers() -> bool:
        try:
            return bool(client.chat("ping", max_tokens=1))
        except EndpointError:
            return False

    try:
        wait_for("the local endpoint (python -m deployment.serve)", answers, proc, log)
        yield base
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def page_env(local_endpoint: str, tmp_path_factory) -> dict[str, str]:
    """A Prompt flow home of this test's own, with the project's settings and the connection to the endpoint."""
    home = tmp_path_factory.mktemp("pf-home")
    env = {**os.environ, **OFFLINE_ENV, "PF_HOME_DIRECTORY": str(home), "PHI_ENDPOINT_KEY": KEY, "SE_AVOID_STATS": "true"}
    where = ["--endpoint", local_endpoint, "--api", ENDPOINT_API] if ENDPOINT_API else ["--endpoint", f"{local_endpoint}/score"]
    connection = [*where, "--max-tokens", str(PARAMS["max_tokens"]), "--temperature", str(PARAMS["temperature"])]
    for cmd in (["common.pf_settings"], ["deployment.connection", "set", *connection]):
        done = subprocess.run([sys.executable, "-m", *cmd], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
    return env


@pytest.fixture(scope="module")
def chat_page(page_env: dict[str, str], repo_root: Path, tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """`python -m flows.chat_page` on a copy of flows/chat; yields (page URL, its log) once the serve app is up."""
    work = tmp_path_factory.mktemp("chat-page")
    flow = work / "chat"
    shutil.copytree(repo_root / "flows" / "chat", flow, ignore=shutil.ignore_patterns(".promptflow", "__pycache__"))
    port = free_port()
    log = work / "chat_page.log"
    proc = start([sys.executable, "-m", "flows.chat_page", "--flow", str(flow), "--port", str(port), "--skip-open-browser"],
                 log, {**page_env, "PYTHONPATH": str(repo_root)}, repo_root)

    def serving() -> str | None:
        match = URL_LINE.search(log.read_text())
        try:
            up = requests.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
        except requests.ConnectionError:
            up = False
        return match.group(1) if match and up else None

    try:
        url = wait_for("the chat page (python -m flows.chat_page)", serving, proc, log)
        yield url, log
    finally:
        stop(proc)
        # the page is served by the Prompt flow service, a background process pf leaves running
        subprocess.run([str(Path(sys.executable).with_name("pf")), "service", "stop"], env=page_env,
                       capture_output=True, timeout=60)


def visible_text(text: str) -> str:
    """Letters and digits only: the page renders the reply as markdown and drops undecodable bytes."""
    return "".join(ch for ch in text if ch.isalnum())


def test_no_browser_is_a_skip_reason_that_says_what_to_install(monkeypatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("CHROMEWEBDRIVER", raising=False)
    reason = find_browser()
    assert isinstance(reason, str)
    assert "a browser and chromedriver not found" in reason and "apt-get install chromium chromium-driver" in reason


def test_github_runner_layout_google_chrome_and_chromewebdriver(monkeypatch, tmp_path) -> None:
    driver = tmp_path / "chromedriver"
    driver.write_text("#!/bin/sh\n")
    driver.chmod(0o755)
    monkeypatch.setenv("CHROMEWEBDRIVER", str(tmp_path))
    monkeypatch.setattr(shutil, "which", {"google-chrome": "/usr/bin/google-chrome"}.get)
    assert find_browser() == ("/usr/bin/google-chrome", str(driver))


@pytest.mark.slow
@pytest.mark.e2e
def test_the_chat_page_answers_a_question_typed_into_it(browser, chat_page, local_endpoint, tmp_path) -> None:
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    binary, driver_path = browser
    url, log = chat_page
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in BROWSER_FLAGS + [f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.get(url)
        box = WebDriverWait(driver, 60).until(
            ec.element_to_be_clickable((By.CSS_SELECTOR, '[contenteditable="true"][role="textbox"]'))
        )
        box.click()
        box.send_keys(QUESTION)
        driver.find_element(By.CSS_SELECTOR, 'button[title="Send"]').click()
        reply = '[data-chatbox-locator="chatbox-message-content"][data-category="chatbot"]'
        # The reply bubble reads "Generating chat output for you" until the flow answers, then the answer;
        # both end with a "View trace" link. The page re-renders while it waits (stale elements).
        finished = lambda d: next(  # noqa: E731
            (e.text for e in d.find_elements(By.CSS_SELECTOR, reply)
             if e.text.strip().endswith("View trace") and not e.text.startswith(PENDING)),
            None,
        )
        try:
            shown = WebDriverWait(driver, 180, ignored_exceptions=(StaleElementReferenceException,)).until(finished)
        except TimeoutException:
            pytest.fail(
                f"no answer on the chat page after 180 s; the page shows:\n{driver.find_element(By.TAG_NAME, 'body').text}"
                f"\n--- chat page log ---\n{log.read_text()[-3000:]}"
            )
        asked = [e.text for e in driver.find_elements(By.CSS_SELECTOR, '[data-category="user"]')]
        screenshot = os.environ.get("CHAT_PAGE_SCREENSHOT") or str(tmp_path / "chat-page.png")
        driver.save_screenshot(screenshot)
    finally:
        driver.quit()

    assert QUESTION in asked[0]
    answer = shown.rsplit("View trace", 1)[0]  # the bubble ends with its "View trace" link
    expected = endpoint_client(local_endpoint).chat(QUESTION, **PARAMS).text
    assert visible_text(expected), f"the endpoint answered nothing to compare: {expected!r}"
    assert visible_text(answer) == visible_text(expected), f"page: {shown!r}\nendpoint: {expected!r}"
    output = log.read_text()
    assert "inherited across fork" not in output
    assert "OneSettings" not in output and "monitor.azure.com" not in output  # offline means offline
