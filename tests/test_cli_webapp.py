"""``hf-sae-steer app``, for real: the server as a process on 127.0.0.1, its HTTP API from
gradio_client, and the page in headless Chromium (Selenium), on the shipped demo offline.

``HF_SAE_STEER_SCREENSHOT=docs/playground.png`` saves the page there (the README's picture);
by default the screenshot goes to a temporary folder.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from hf_sae_steer.generation import continue_prompts
from hf_sae_steer.models import load_model
from hf_sae_steer.sae.loading import load_sae
from hf_sae_steer.scores.record import load_scores
from hf_sae_steer.steering.steered import SteeredModel

pytest.importorskip("gradio", reason="the web app needs the [app] extra (gradio)")

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "storage" / "demo"


def demo_strength() -> str:
    """The demo artifact's recommended strength as the playground prints it."""
    from hf_sae_steer.scores.record import load_scores

    return f"{load_scores(DEMO / 'scores').recommended['strength']:.3g}"
PROMPT = "The children went"
TOKENS = 12
WAIT = 90  # seconds: a bound on every wait, never a speed claim
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening_addresses(port: int) -> set[str] | None:
    """The IPv4/IPv6 addresses listening on ``port`` (Linux's /proc/net; None elsewhere)."""
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            return None
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                words = [raw[i : i + 4][::-1] for i in range(0, len(raw), 4)]  # little-endian
                found.add(socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6,
                                           b"".join(words)))  # fmt: skip
    return found


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    """``hf-sae-steer app`` on a free loopback port; stopped (Ctrl-C, then killed) at the end."""
    port = _free_port()
    log = tmp_path_factory.mktemp("app") / "server.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "hf_sae_steer", "app", "--port", str(port), "--quiet",
               "--max-new-tokens", str(TOKENS)]  # fmt: skip
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + WAIT
        while True:
            if process.poll() is not None:
                pytest.fail(f"the app exited with {process.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the app did not answer within {WAIT} s:\n{log.read_text()}")
            time.sleep(0.25)
        assert _listening_addresses(port) in ({"127.0.0.1"}, None)  # loopback only
        yield url
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            stopped = process.wait(timeout=15)
        except subprocess.TimeoutExpired:  # SIGINT ignored (a shell's background job): kill
            process.kill()
            process.wait(timeout=15)
            stopped = None  # killed: no exit status of ours to check
    assert "Traceback" not in log.read_text(), log.read_text()
    assert stopped in (0, None), f"exit status {stopped} after Ctrl-C:\n{log.read_text()}"


@pytest.fixture(scope="module")
def expected() -> dict[str, str]:
    """The library's own continuations of PROMPT: what the app must show."""
    model, tokenizer = load_model(str(DEMO / "model"))
    base = continue_prompts(model, tokenizer, [PROMPT], max_new_tokens=TOKENS)[0]
    sae, scores = load_sae(DEMO / "sae"), load_scores(DEMO / "scores")
    with SteeredModel(model, sae, scores=scores) as steered:
        recommended = continue_prompts(steered, tokenizer, [PROMPT], max_new_tokens=TOKENS)[0]
    seed = load_scores(DEMO / "scores_seed")  # swap: on the reference rule's scores, as the demo
    with SteeredModel(model, sae, scores=seed, method="swap", strength=0.5) as steered:
        swap = continue_prompts(steered, tokenizer, [PROMPT], max_new_tokens=TOKENS)[0]
    return {"base": base, "recommended": recommended, "swap": swap}


def test_http_api(server, expected):
    from gradio_client import Client

    client = Client(server, verbose=False)
    assert {"/generate", "/compare", "/latents"} <= set(
        client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    )
    answer = client.predict(PROMPT, max_new_tokens=TOKENS, api_name="/compare")
    assert answer["error"] is None
    assert answer["steering"].startswith(
        f"add (the scores' recommendation) at strength {demo_strength()}"
    )
    outputs = answer["outputs"]
    assert outputs["base"]["text"] == expected["base"]
    assert outputs["steered"]["text"] == expected["recommended"]
    assert all(out["seconds"] > 0 for out in outputs.values())

    answer = client.predict(PROMPT, "swap", "0.5", "all", "default", TOKENS, api_name="/compare")
    assert answer["outputs"]["steered"]["text"] == expected["swap"]
    assert answer["steering"].startswith("swap on the reference rule's scores (seed) at strength")

    base, steered, status = client.predict(
        PROMPT, "recommended", "", "all", "default", TOKENS, False, api_name="/generate"
    )  # the button's endpoint: its last streamed state
    assert base["value"] == expected["base"] and steered["value"] == expected["recommended"]
    assert steered["label"].startswith("steered · ") and "**done**" in status

    for args, message in [
        (("", "recommended"), "The prompt is empty"),
        ((PROMPT, "swap", "abc"), "Strength must be a number"),
        ((PROMPT, "amplify"), "Unknown method 'amplify'"),
        (("word " * 200, "recommended"), "exceeds the model's context of 128 tokens"),
        ((123, "recommended"), "The prompt must be text; got int"),
        ((PROMPT, 5), "Unknown method 5"),
        ((PROMPT, "swap", "0.5", 3), "Unknown positions 3"),
        ((PROMPT, "swap", "0.5", "all", 7), "preserve_error takes on, off or default; got 7"),
        ((PROMPT, "swap", "0.5", "all", "on", TOKENS, "maybe"), "sample takes on, off"),
        ((PROMPT, "swap", "0.5", "all", "on", 1.5), "whole number from 1 to 512; got 1.5"),
    ]:
        answer = client.predict(*args, api_name="/compare")
        assert message in answer["error"] and "Traceback" not in answer["error"]

    table = client.predict(api_name="/latents")
    assert table["headers"][:2] == ["rank", "latent"] and len(table["data"]) >= 3
    assert all(row[4].count("'") >= 2 for row in table["data"][:3])  # tokens that fire them


def test_http_api_samples_and_effect(server):
    """The marked samples and the effect in words follow a generation; they are the library's
    own samples (the same seeds) with the words of the library's own effect marked."""
    import html

    from gradio_client import Client

    from hf_sae_steer.cli.samples import sample_generator, shown_samples
    from hf_sae_steer.steering.effect import effect_of

    model, tokenizer = load_model(str(DEMO / "model"))
    sae, scores = load_sae(DEMO / "sae"), load_scores(DEMO / "scores")
    effect = effect_of(model, tokenizer, sae, scores=scores)
    topic = effect.topic_token_ids(20)
    generator = sample_generator(tokenizer, [PROMPT], samples=3, max_new_tokens=TOKENS)
    base = shown_samples(model, generator, topic)[0]
    with SteeredModel(model, sae, scores=scores) as steered:
        recommended = shown_samples(steered, generator, topic)[0]

    client = Client(server, verbose=False)
    assert {"/samples", "/effect"} <= set(
        client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    )
    page, words = client.predict(PROMPT, "recommended", "", "all", "default", TOKENS, False,
                                 api_name="/samples")  # fmt: skip
    assert "repetition_penalty 1.3" in page
    base_part, steered_part = page.split("<h4>steered")
    for shown, part in [(base, base_part), (recommended, steered_part)]:
        for sample in shown:
            assert f"{html.escape(PROMPT)}<b>{sample.marked('html')}</b>" in part
        assert f"({sum(len(s.spans) for s in shown)} marked)" in part
    assert ", ".join(effect.words(20)) in words and effect.format(latents=3) in words

    answer = client.predict("swap", "0.5", api_name="/effect")
    assert answer["error"] is None
    swap_line = "swap on the reference rule's scores (seed) at strength 0.5"
    assert answer["steering"].startswith(swap_line)
    seed = load_scores(DEMO / "scores_seed")  # swap: on the reference rule's scores, as the demo
    swap = effect_of(model, tokenizer, sae, scores=seed, method="swap", strength=0.5)
    assert answer["words"] == swap.words(20) and answer["effect"] == swap.to_dict()
    answer = client.predict("amplify", api_name="/effect")
    assert "Unknown method 'amplify'" in answer["error"]
    page, _ = client.predict("", "recommended", "", "all", "default", TOKENS, False,
                             api_name="/samples")  # fmt: skip
    assert "The prompt is empty" in page and "Traceback" not in page


@pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Chromium and its driver (Debian: apt-get install chromium chromium-driver)",
)
def test_page_in_headless_chromium(server, expected, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1280,900", "--hide-scrollbars"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    wait = WebDriverWait(driver, WAIT)

    def text(selector: str) -> str:
        return driver.find_element(By.CSS_SELECTOR, selector).text

    def output(name: str) -> str:
        box = driver.find_element(By.CSS_SELECTOR, f"#out-{name} textarea")
        return box.get_attribute("value") or ""

    try:
        driver.get(server)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#prompt textarea"))
        page = driver.find_element(By.TAG_NAME, "body").text
        for control in ("method", "strength", "positions", "preserve_error", "new tokens"):
            assert control in page, control
        assert "coverage" in text("#report") and "Recommended steering" in text("#report")
        wait.until(lambda d: "'" in text("#latents"))  # filled on load: tokens with activations

        driver.find_element(By.CSS_SELECTOR, "#prompt textarea").send_keys(PROMPT)
        driver.find_element(By.CSS_SELECTOR, "#generate").click()
        wait.until(lambda d: "done" in text("#status"))
        assert output("base") == expected["base"]
        assert output("steered") == expected["recommended"]
        assert text("#out-steered").startswith("steered · ")  # its time in the label
        wait.until(lambda d: "steered (" in text("#samples"))  # the samples follow
        assert "raises" in text("#effect") and "Words it raises most" in text("#effect")
        _screenshot(driver, tmp_path)

        strength = driver.find_element(By.CSS_SELECTOR, "#strength textarea, #strength input")
        strength.send_keys("abc")
        driver.find_element(By.CSS_SELECTOR, "#generate").click()
        wait.until(lambda d: "Strength must be a number" in text("#status"))
        assert "Traceback" not in driver.find_element(By.TAG_NAME, "body").text
    finally:
        driver.quit()


def _screenshot(driver, tmp_path: Path) -> None:
    """The whole page at 1280 wide (the README's picture when HF_SAE_STEER_SCREENSHOT says)."""
    target = Path(os.environ.get("HF_SAE_STEER_SCREENSHOT") or tmp_path / "playground.png")
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, min(max(int(height), 900), 1600))
    target.parent.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(target)) and target.stat().st_size > 10_000


@pytest.fixture(scope="module")
def topic() -> dict:
    """A topic of one's own (tests/topic_texts.py) as the library fits it, and how it steers."""
    from topic_texts import FOOD, fit_on_demo, steered_on_demo

    scores = fit_on_demo(FOOD)
    return {"texts": FOOD, "scores": scores, "steered": steered_on_demo(scores, PROMPT, TOKENS)}


def _check_zipped_topic(archive: Path, scores, folder: Path) -> None:
    """The zip holds a topic-scores folder that loads back as ``scores``."""
    import zipfile

    import torch

    from hf_sae_steer.scores.record import FeatureScores

    with zipfile.ZipFile(archive) as zipped:
        zipped.extractall(folder)
    saved = FeatureScores.from_pretrained(folder / "topic-scores")
    torch.testing.assert_close(saved.scores, scores.scores)
    assert saved.recommended == scores.recommended and saved.rule == scores.rule


def test_http_api_fits_your_topic(server, expected, topic, tmp_path):
    from gradio_client import Client

    assert topic["steered"] != expected["recommended"]  # else the checks could not tell
    client = Client(server, verbose=False)
    assert {"/fit_topic", "/reset_topic", "/save_topic"} <= set(
        client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    )
    try:
        answer = client.predict("one text\nanother", api_name="/fit_topic")
        assert "at least 4 example texts" in answer["error"] and "Traceback" not in answer["error"]
        answer = client.predict(PROMPT, max_new_tokens=TOKENS, api_name="/compare")
        assert answer["outputs"]["steered"]["text"] == expected["recommended"]  # unchanged

        answer = client.predict(topic["texts"], api_name="/fit_topic")  # a list works too
        assert answer["error"] is None and answer["topic"] == "6 example texts"
        strength = f"{topic['scores'].recommended['strength']:.3g}"
        assert f"recommendation) at strength {strength}," in answer["steering"]
        assert answer["report"].endswith(str(topic["scores"].report()))
        answer = client.predict(PROMPT, max_new_tokens=TOKENS, api_name="/compare")
        assert answer["outputs"]["steered"]["text"] == topic["steered"]
        assert answer["outputs"]["base"]["text"] == expected["base"]

        archive, note = client.predict(api_name="/save_topic")
        assert "saved" in note
        _check_zipped_topic(archive, topic["scores"], tmp_path)
    finally:
        answer = client.predict(api_name="/reset_topic")
    assert answer["error"] is None and f"at strength {demo_strength()}" in answer["steering"]
    answer = client.predict(PROMPT, max_new_tokens=TOKENS, api_name="/compare")
    assert answer["outputs"]["steered"]["text"] == expected["recommended"]
    archive, note = client.predict(api_name="/save_topic")
    assert archive is None and "No topic of your own yet" in note


@pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Chromium and its driver (Debian: apt-get install chromium chromium-driver)",
)
def test_topic_panel_in_headless_chromium(server, expected, topic, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1280,1400"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    wait = WebDriverWait(driver, WAIT)

    def text(selector: str) -> str:
        return driver.find_element(By.CSS_SELECTOR, selector).text

    def steered() -> str:
        box = driver.find_element(By.CSS_SELECTOR, "#out-steered textarea")
        return box.get_attribute("value") or ""

    def generate() -> None:
        driver.find_element(By.CSS_SELECTOR, "#generate").click()
        wait.until(lambda d: "done" in text("#status"))

    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    try:
        driver.get(server)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#topic-texts textarea"))
        assert "Your topic" in driver.find_element(By.TAG_NAME, "body").text
        driver.find_element(By.CSS_SELECTOR, "#topic-file input[type=file]").send_keys(str(empty))
        driver.find_element(By.CSS_SELECTOR, "#topic-fit").click()
        wait.until(lambda d: "No prompts in empty.txt" in text("#topic-status"))
        driver.find_element(By.CSS_SELECTOR, "#prompt textarea").send_keys(PROMPT)
        generate()
        assert steered() == expected["recommended"]  # the app works on after bad input

        driver.find_element(By.CSS_SELECTOR, "#topic-file button[aria-label='Clear']").click()
        box = driver.find_element(By.CSS_SELECTOR, "#topic-texts textarea")
        box.send_keys("\n".join(topic["texts"]))
        driver.find_element(By.CSS_SELECTOR, "#topic-fit").click()
        wait.until(lambda d: "fitted your topic (6 pasted texts)" in text("#topic-status"))
        strength = f"{topic['scores'].recommended['strength']:.3g}"
        wait.until(lambda d: f"at strength {strength}" in text("#report"))  # then refreshed
        wait.until(lambda d: f"at strength {strength}" in text("#status"))
        generate()
        assert steered() == topic["steered"]
        driver.find_element(By.CSS_SELECTOR, "#topic-save").click()
        link = "#topic-download a[download='topic-scores.zip']"
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, link))
        assert "saved your topic's scores (6 pasted texts)" in text("#topic-status")
        href = driver.find_element(By.CSS_SELECTOR, link).get_attribute("href")
        with urllib.request.urlopen(href, timeout=WAIT) as response:  # what the link downloads
            (tmp_path / "download.zip").write_bytes(response.read())
        _check_zipped_topic(tmp_path / "download.zip", topic["scores"], tmp_path / "unzipped")

        driver.find_element(By.CSS_SELECTOR, "#topic-reset").click()
        wait.until(lambda d: "loaded scores again" in text("#topic-status"))
        generate()
        assert steered() == expected["recommended"]
        assert "Traceback" not in driver.find_element(By.TAG_NAME, "body").text
    finally:
        driver.quit()


def test_space_entry_builds_the_same_app():
    import runpy

    import gradio as gr

    space = runpy.run_path(str(ROOT / "spaces" / "app.py"), run_name="space")  # not launched
    demo = space["demo"]
    assert isinstance(demo, gr.Blocks)
    ids = {block.elem_id for block in demo.blocks.values()}
    assert {"prompt", "generate", "out-base", "out-steered", "report", "latents"} <= ids
    assert {"generate", "compare", "latents"} <= {d.api_name for d in demo.fns.values()}


def test_app_refuses_a_bad_host_or_a_busy_port_in_one_line(capsys, monkeypatch):
    from hf_sae_steer.cli import interactive
    from hf_sae_steer.cli.main import main

    loads = []
    monkeypatch.setattr(interactive, "_playground", lambda args: loads.append(1))
    code = main(["app", "--host", "192.0.2.1", "--quiet"])  # TEST-NET: nobody's address
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--host '192.0.2.1' is not an address of this machine" in err
    code = main(["app", "--host", "not a host!", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "--host 'not a host!' is not a valid address" in err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main(["app", "--port", str(port), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"port {port} on 127.0.0.1 is busy" in err and "--port" in err
    code = main(["app", "--port", "70000", "--quiet"])
    assert code == 2 and "--port must be from 1 to 65535" in capsys.readouterr().err
    assert loads == []  # refused before the model loads


def test_http_api_refuses_topic_texts_over_the_limit(server):
    # issue 23: a 10 MB line went through /fit_topic; now one answer naming the limit.
    from gradio_client import Client

    from hf_sae_steer.cli.topics import MAX_EXAMPLE_CHARS

    client = Client(server, verbose=False)
    texts = ["Bread is baked.", "Soup is boiled.", "Rice is cooked.", "x" * 2_000_000]
    for sent in (texts, "\n".join(texts)):
        answer = client.predict(sent, api_name="/fit_topic")
        assert f"at most {MAX_EXAMPLE_CHARS:,} characters" in answer["error"], answer
        assert "Traceback" not in answer["error"] and "\n" not in answer["error"]
