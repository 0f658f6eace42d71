"""Regenerate the picture of the web playground in docs/playground.md (``docs/playground.png``).

    python scripts/screenshot_playground.py [--out docs/playground.png] [--prompt "The king"]

Starts ``hf-sae-steer app`` on the shipped demo on a free loopback port (offline), opens the
page in headless Chromium through Selenium, types the prompt, presses Generate, waits until the
status line says done and the page has stopped changing, saves the whole page (1280 wide) and
stops the app with Ctrl-C. The picture replaces ``--out`` only once it has been taken; on any
failure the old one stays and the app's log is printed. Needs Chromium and its driver (Debian:
``apt-get install chromium chromium-driver fonts-dejavu-core``), ``selenium`` and the ``[app]``
extra (``bash scripts/setup.sh`` installs both into ``.venv``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what: str, ready: Callable[[], bool], limit: float, app: subprocess.Popen) -> None:
    """Poll ``ready`` until it holds; fail after ``limit`` seconds or if the app exits."""
    deadline = time.monotonic() + limit
    while not ready():
        if app.poll() is not None:
            raise RuntimeError(f"the app exited with status {app.returncode} before {what}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"gave up after {limit:.0f} s waiting for {what}")
        time.sleep(0.25)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def _start_app(port: int, tokens: int | None, log) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "hf_sae_steer", "app", "--port", str(port), "--quiet"]
    if tokens is not None:
        command += ["--max-new-tokens", str(tokens)]
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def _stop_app(app: subprocess.Popen) -> None:
    if app.poll() is None:
        app.send_signal(signal.SIGINT)  # Ctrl-C, as a user stops it
        try:
            app.wait(timeout=15)
        except subprocess.TimeoutExpired:
            app.kill()
            app.wait(timeout=15)


def _browser(chromium: str, chromedriver: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1280,900", "--hide-scrollbars"):  # fmt: skip
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(chromedriver), options=options)


def _settled(driver, quiet_for: float, limit: float) -> None:
    """Wait until the page's text has not changed for ``quiet_for`` seconds (panels that fill
    in after the run, such as the latent table), at most ``limit`` seconds."""
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + limit
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        now = driver.find_element(By.TAG_NAME, "body").text
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_for:
            return
        time.sleep(0.25)


def screenshot(out: Path, prompt: str, tokens: int | None, max_height: int, limit: float) -> None:
    from selenium.webdriver.common.by import By

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        raise SystemExit("needs Chromium and its driver: apt-get install chromium chromium-driver")
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    with tempfile.TemporaryDirectory() as scratch:
        log_path = Path(scratch) / "app.log"
        with log_path.open("w") as log:
            app = _start_app(port, tokens, log)
        driver = None
        try:
            t0 = time.monotonic()
            _wait("the app's first page", lambda: _answers(url), limit, app)
            print(f"app answered in {time.monotonic() - t0:.1f} s", flush=True)
            driver = _browser(chromium, chromedriver)

            def text(selector: str) -> str:
                found = driver.find_elements(By.CSS_SELECTOR, selector)
                return found[0].text if found else ""

            driver.get(url)
            _wait("the prompt box",
                  lambda: bool(driver.find_elements(By.CSS_SELECTOR, "#prompt textarea")),
                  limit, app)  # fmt: skip
            driver.find_element(By.CSS_SELECTOR, "#prompt textarea").send_keys(prompt)
            driver.find_element(By.CSS_SELECTOR, "#generate").click()
            _wait("the run to finish", lambda: "done" in text("#status"), limit, app)
            _settled(driver, quiet_for=1.5, limit=limit)
            print(f"generated in the page; {time.monotonic() - t0:.1f} s so far", flush=True)
            page = driver.execute_script("return document.documentElement.scrollHeight")
            height = min(max(int(page), 900), max_height)
            # The viewport itself (a window's size would include its frame and cut the page).
            driver.execute_cdp_cmd(
                "Emulation.setDeviceMetricsOverride",
                {"width": 1280, "height": height, "deviceScaleFactor": 1, "mobile": False},
            )
            time.sleep(0.5)  # one repaint at the new size
            taken = Path(scratch) / "playground.png"
            if not driver.save_screenshot(str(taken)) or taken.stat().st_size < 10_000:
                raise RuntimeError("the screenshot came out empty")
            out.parent.mkdir(parents=True, exist_ok=True)
            staged = out.with_name(f".{out.name}.tmp")
            shutil.copyfile(taken, staged)
            os.replace(staged, out)  # the old picture stays until the new one is whole
            print(
                f"wrote {out} ({out.stat().st_size // 1024} KiB, 1280 x {height}) "
                f"in {time.monotonic() - t0:.1f} s"
            )
        except BaseException:
            print(f"--- the app's log ---\n{log_path.read_text()}", file=sys.stderr)
            raise
        finally:
            if driver is not None:
                driver.quit()
            _stop_app(app)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "playground.png")
    parser.add_argument("--prompt", default="The king")
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help="the app's --max-new-tokens (default: the app's own)",
    )
    parser.add_argument("--max-height", type=int, default=1600, help="pixels; the page is cut")
    parser.add_argument(
        "--timeout",
        type=float,
        default=180.0,
        help="seconds allowed for each wait (start, run), not a speed claim",
    )
    args = parser.parse_args()
    try:
        screenshot(args.out, args.prompt, args.max_new_tokens, args.max_height, args.timeout)
    except RuntimeError as error:
        raise SystemExit(f"screenshot_playground: {error}") from None


if __name__ == "__main__":
    main()
