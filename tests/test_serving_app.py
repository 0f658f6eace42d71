"""The server, live, through the official ``openai`` client: ``hf-sae-steer serve`` on the shipped
demo in a subprocess, and an in-process server on a tiny long-context model for the flood and
disconnect tests. Every steered output is compared with SteeredModel.generate run alone."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

openai = pytest.importorskip("openai", reason="the serving tests use the official openai client")
httpx = pytest.importorskip("httpx")
psutil = pytest.importorskip("psutil")
pytest.importorskip("fastapi", reason="hf-sae-steer serve needs the [serve] extra")

from hf_sae_steer.models import load_model  # noqa: E402
from hf_sae_steer.sae.loading import load_sae  # noqa: E402
from hf_sae_steer.scores.record import load_scores  # noqa: E402
from hf_sae_steer.steering.steered import SteeredModel  # noqa: E402

DEMO = Path(__file__).resolve().parents[1] / "storage" / "demo"
NAME = "hf-sae-steer-demo"
PROMPTS = ["The children went", "A doctor", "She opened the door and looked at the"]
# (request steering, SteeredModel options on the same artifact; None = the base model)
STEERINGS = [
    (None, None),
    ([{"concept": "medical"}], ("scores", {})),
    ([{"concept": "medical", "method": "swap", "strength": 0.5}],
     ("scores", {"method": "swap", "strength": 0.5})),
    ([{"vector": "medical", "strength": 6}], ("scores", {"method": "vector", "strength": 6.0})),
    ([{"concept": "seed"}], ("scores_seed", {})),
    ([{"concept": "medical", "positions": "generated", "strength": 9}],
     ("scores", {"positions": "generated", "strength": 9.0})),
    ([{"concept": "medical", "method": "clamp", "positions": "prompt"}],
     ("scores", {"method": "clamp", "positions": "prompt"})),
    ([{"latents": {"5": 8.0, "77": 4.0}, "strength": 1.5}],
     (None, {"method": "add", "latents": {5: 8.0, 77: 4.0}, "strength": 1.5})),
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen | None = None, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"The server exited: {proc.stdout.read()}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError("The server did not start.")


@pytest.fixture(scope="module")
def server():
    port = free_port()
    cmd = [sys.executable, "-m", "hf_sae_steer", "serve", "--port", str(port), "--quiet",
           "--concept", f"medical={DEMO / 'scores'}", "--concept", f"seed={DEMO / 'scores_seed'}",
           "--max-waiting", "256"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        yield url, proc
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server[0]}/v1", api_key="none", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def reference():
    """What SteeredModel.generate (greedy) gives for a prompt and a steering, run alone."""
    model, tokenizer = load_model(str(DEMO / "model"))
    sae = load_sae(str(DEMO / "sae"))
    artifacts = {name: load_scores(DEMO / name) for name in ("scores", "scores_seed")}
    cache: dict = {}

    def generate(prompt: str, steering, n: int) -> str:
        key = (prompt, json.dumps(steering, default=str), n)
        if key not in cache:
            ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
            kw = {"attention_mask": torch.ones_like(ids), "max_new_tokens": n, "do_sample": False}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if steering is None:
                    out = model.generate(ids, **kw)
                else:
                    artifact, options = steering
                    scores = artifacts[artifact] if artifact else None
                    with SteeredModel(model, sae, scores=scores, **options) as steered:
                        out = steered.generate(ids, **kw)
            cache[key] = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        return cache[key]

    generate.tokenizer = tokenizer
    return generate


def test_a_steered_completion_equals_steered_model_generate(client, reference):
    """The issue's example: the official client, extra_body steering, greedy."""
    r = client.completions.create(
        model=NAME,
        prompt="The children went",
        max_tokens=24,
        temperature=0,
        extra_body={"steering": [{"concept": "medical"}]},
    )
    assert r.choices[0].text == reference("The children went", ("scores", {}), 24)
    (applied,) = r.model_extra["steering"]
    rec = load_scores(DEMO / "scores").recommended
    assert applied["concept"] == "medical" and applied["method"] == rec["method"]
    assert applied["strength"] == pytest.approx(rec["strength"]) and applied["positions"] == "all"
    assert r.usage.prompt_tokens == len(reference.tokenizer("The children went")["input_ids"])
    base = client.completions.create(model=NAME, prompt="The children went", max_tokens=24,
                                     temperature=0)  # fmt: skip
    assert base.choices[0].text == reference("The children went", None, 24) != r.choices[0].text
    assert base.model_extra["steering"] == []


def test_streaming_completion_and_chat(client, reference):
    chunks = list(client.completions.create(
        model=NAME, prompt="A doctor", max_tokens=20, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"steering": [{"concept": "medical"}]},
    ))  # fmt: skip
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == reference("A doctor", ("scores", {}), 20)
    assert chunks[0].model_extra["steering"][0]["concept"] == "medical"
    assert chunks[-2].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1
    # The demo has no chat template: the plain fallback "user: ...\nassistant:".
    stream = client.chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": "Tell me about the sea"}],
        max_tokens=16, temperature=0, stream=True, extra_body={"steering": [{"vector": "medical",
                                                                             "strength": 6}]},
    )  # fmt: skip
    deltas = [c.choices[0].delta for c in stream]
    assert deltas[0].role == "assistant"
    expected = reference("user: Tell me about the sea\nassistant:",
                         ("scores", {"method": "vector", "strength": 6.0}), 16)  # fmt: skip
    assert "".join(d.content or "" for d in deltas) == expected
    whole = client.chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": "Tell me about the sea"}],
        max_tokens=16, temperature=0, extra_body={"steering": [{"vector": "medical",
                                                                "strength": 6}]},
    )  # fmt: skip
    assert whole.choices[0].message.content == expected


def test_concurrent_clients_with_mixed_steering_never_cross_talk(client, reference):
    cases = [(p, s) for p in PROMPTS for s in STEERINGS]  # 24 requests at once

    def ask(case):
        prompt, (steering, _) = case
        extra = {"steering": steering} if steering is not None else {}
        if len(prompt) % 2:
            stream = client.completions.create(
                model=NAME,
                prompt=prompt,
                max_tokens=20,
                temperature=0,
                stream=True,
                extra_body=extra,
            )
            return "".join(c.choices[0].text for c in stream)
        r = client.completions.create(model=NAME, prompt=prompt, max_tokens=20, temperature=0,
                                      extra_body=extra)  # fmt: skip
        return r.choices[0].text

    with ThreadPoolExecutor(len(cases)) as pool:
        got = list(pool.map(ask, cases))
    expected = [reference(p, s[1], 20) for p, s in cases]
    assert len(set(expected)) > len(PROMPTS) + 3  # the steerings really differ
    assert got == expected


def _post(url, body, **kw):
    content = body if isinstance(body, bytes) else json.dumps(body)
    return httpx.post(f"{url}/v1/completions", content=content,
                      headers={"content-type": "application/json"}, timeout=60, **kw)  # fmt: skip


@pytest.mark.parametrize(
    "body, status, match",
    [
        (b'{"prompt": "a", ', 400, "not valid JSON"),
        (b'{"prompt": "a", "steering": [{"concept": "medical", "strength": NaN}]}', 400,
         "strength must be a finite number"),
        ({"prompt": "a", "steering": [{"concept": "oncology"}]}, 400,
         "unknown concept 'oncology'; this server has: medical, seed"),
        ({"prompt": "a", "steering": [{"concept": "medical", "strength": 1e6}]}, 400,
         "between -1000 and 1000"),
        ({"prompt": "a", "steering": [{"concept": "medical", "method": "boost"}]}, 400,
         "method 'boost' is unknown"),
        ({"prompt": "a", "steerng": [{"concept": "medical"}]}, 400, "steerng"),
        ({"prompt": "a", "max_tokens": 10**9}, 400, "at most 127 new tokens fit"),
        ({"prompt": "a " * 200}, 400, "the model's context holds 128"),
        ({"prompt": "a" * 32_001}, 400, "32001 characters; this server takes at most 32000"),
        ({"prompt": "a", "model": "gpt-4"}, 404, "not served here"),
    ],
)  # fmt: skip
def test_bad_requests_get_one_line_errors_and_the_server_stays_up(server, body, status, match):
    r = _post(server[0], body)
    assert r.status_code == status
    error = r.json()["error"]
    assert match in error["message"] and "\n" not in error["message"]
    assert _post(server[0], {"prompt": "a", "max_tokens": 2}).status_code == 200


def test_a_40_mb_prompt_is_refused_without_being_read_into_memory(server, client):
    before = psutil.Process(server[1].pid).memory_info().rss
    r = _post(server[0], json.dumps({"prompt": "x" * 40_000_000}).encode())
    assert r.status_code == 413 and "this server takes at most" in r.json()["error"]["message"]
    assert psutil.Process(server[1].pid).memory_info().rss - before < 20e6
    with pytest.raises(openai.BadRequestError, match="unknown concept"):
        client.completions.create(model=NAME, prompt="a", max_tokens=2,
                                  extra_body={"steering": [{"concept": "x"}]})  # fmt: skip


def test_models_lists_the_model_and_its_concepts(client, server):
    models = client.models.list()
    assert [m.id for m in models.data] == [NAME]
    assert models.data[0].model_extra["concepts"] == ["medical", "seed"]
    described = httpx.get(f"{server[0]}/v1/models").json()["concepts"]
    assert [c["name"] for c in described] == ["medical", "seed"]
    assert described[0]["recommended"]["method"] == "add" and described[0]["vector"]
    assert httpx.get(f"{server[0]}/health").json()["status"] == "ok"
    assert httpx.get(f"{server[0]}/nowhere").json()["error"]["message"].startswith("GET /nowhere")


def test_memory_stays_steady_across_1000_requests(server):
    """RSS of the server process after 200 warm-up requests and after 1,000 more (mixed
    steerings, cheap: 2 tokens each). Tolerance: 25 MB (allocator noise; a leak of a cache
    row, a job or an event queue per request would be several times that)."""
    url, proc = server
    bodies = [{"prompt": f"{i} the patient", "max_tokens": 2, "temperature": 0,
               "steering": STEERINGS[i % len(STEERINGS)][0]} for i in range(1200)]  # fmt: skip

    def send(chunk):
        with httpx.Client(timeout=60) as http:
            return [http.post(f"{url}/v1/completions", json=b).status_code for b in chunk]

    def run(part):
        with ThreadPoolExecutor(8) as pool:
            return sum(pool.map(send, [part[i::8] for i in range(8)]), [])

    assert set(run(bodies[:200])) == {200}
    before = psutil.Process(proc.pid).memory_info().rss
    assert set(run(bodies[200:])) == {200}
    grown = psutil.Process(proc.pid).memory_info().rss - before
    print(f"server RSS {before / 1e6:.1f} MB, +{grown / 1e6:.1f} MB over 1,000 requests")
    assert grown < 25e6, f"RSS grew by {grown / 1e6:.1f} MB over 1,000 requests"
    stats = httpx.get(f"{url}/health").json()
    assert stats["running"] == 0 and stats["waiting"] == 0


# -- an in-process server with tiny limits, on a tiny model with a long context -----------------
@pytest.fixture
def tiny(tokenizer):
    import uvicorn
    from tiny_models import tiny_topk_sae
    from transformers import GPT2Config, GPT2LMHeadModel

    from hf_sae_steer.serving.app import build_app
    from hf_sae_steer.serving.concepts import ConceptLibrary
    from hf_sae_steer.serving.transformers_engine import TransformersEngine

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=4096,
                        vocab_size=len(tokenizer), eos_token_id=0, pad_token_id=0)  # fmt: skip
    model = GPT2LMHeadModel(config).eval()
    library = ConceptLibrary(model, [tiny_topk_sae(d=32, layer=1)], {})
    engine = TransformersEngine(model, tokenizer, library, name="tiny", max_batch=2,
                                max_waiting=2)  # fmt: skip
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(build_app(engine, library), host="127.0.0.1",
                                           port=port, log_level="error"))  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, timeout=30)
    yield url, engine
    server.should_exit = True
    thread.join(timeout=10)
    engine.close()


def _settled(url, key, value, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = httpx.get(f"{url}/health").json()
        if stats[key] >= value and stats["running"] == 0:
            return stats
        time.sleep(0.05)
    raise AssertionError(f"health never showed {key} >= {value}: {stats}")


def test_a_client_that_disconnects_frees_its_slot(tiny):
    url, engine = tiny
    long = {"prompt": "The patient", "max_tokens": 4000, "ignore_eos": True, "temperature": 0}
    with httpx.stream("POST", f"{url}/v1/completions", json={**long, "stream": True},
                      timeout=60) as r:  # fmt: skip
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
        next(lines), next(lines)
    stats = _settled(url, "cancelled", 1)
    assert stats["tokens"] < 3000  # stopped long before max_tokens
    with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as raw:
        body = json.dumps(long).encode()
        raw.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
            b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        time.sleep(0.5)  # generating; then the client goes away without reading
    stats = _settled(url, "cancelled", 2)
    assert stats["tokens"] < 6000
    r = _post(url, {"prompt": "The patient", "max_tokens": 3, "ignore_eos": True})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3


def test_a_flood_is_refused_with_429_and_the_server_stays_up(tiny):
    url, engine = tiny
    body = {"prompt": "The river", "max_tokens": 300, "ignore_eos": True, "temperature": 0}
    with ThreadPoolExecutor(20) as pool:
        replies = list(pool.map(lambda _: _post(url, body), range(20)))
    codes = [r.status_code for r in replies]
    assert set(codes) <= {200, 429} and codes.count(429) >= 5 and codes.count(200) >= 2
    busy = next(r for r in replies if r.status_code == 429)
    assert busy.json()["error"]["type"] == "rate_limit_error" and busy.headers["retry-after"]
    assert all(r.json()["usage"]["completion_tokens"] == 300 for r in replies if r.is_success)
    stats = _settled(url, "completed", codes.count(200))
    assert stats["waiting"] == 0
    assert _post(url, {"prompt": "a", "max_tokens": 2}).status_code == 200
