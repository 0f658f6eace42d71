"""``/tokenize``, ``/detokenize``, ``/version`` and ``/metrics`` (Prometheus) on the demo."""

from __future__ import annotations

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi", reason="hf-sae-steer serve needs the [serve] extra")
parser = pytest.importorskip("prometheus_client.parser")

from serving_live import live_server, running_demo  # noqa: E402

import hf_sae_steer  # noqa: E402

NAME = "hf-sae-steer-demo"
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me"}]


@pytest.fixture(scope="module")
def demo():
    with running_demo() as demo:
        yield demo


@pytest.fixture
def url(demo):
    with live_server(*demo) as address:  # a fresh app: its own counters
        yield address


def test_tokenize_counts_what_a_request_reports_as_its_prompt_tokens(url, demo):
    tokenizer = demo[0].tokenizer
    prompt = "The children went to the seaside"
    r = httpx.post(f"{url}/tokenize", json={"prompt": prompt, "model": NAME}).json()
    assert r["tokens"] == tokenizer(prompt)["input_ids"] and r["count"] == len(r["tokens"])
    assert r["max_model_len"] == 128 and r["token_strs"] is None
    done = httpx.post(f"{url}/v1/completions", json={"prompt": prompt, "max_tokens": 1}).json()
    assert done["usage"]["prompt_tokens"] == r["count"]
    chat = httpx.post(f"{url}/tokenize", json={"messages": CHAT}).json()
    reply = httpx.post(f"{url}/v1/chat/completions", json={"messages": CHAT, "max_tokens": 1})
    assert reply.json()["usage"]["prompt_tokens"] == chat["count"]
    assert chat["tokens"] == tokenizer("system: Be brief.\nuser: Tell me\nassistant:")["input_ids"]
    strs = httpx.post(f"{url}/tokenize", json={"prompt": "A doctor", "return_token_strs": True})
    assert strs.json()["token_strs"] == tokenizer.convert_ids_to_tokens(
        tokenizer("A doctor")["input_ids"]
    )


def test_detokenize_inverts_tokenize(url):
    ids = httpx.post(f"{url}/tokenize", json={"prompt": "A doctor examined"}).json()["tokens"]
    r = httpx.post(f"{url}/detokenize", json={"tokens": ids})
    assert r.json() == {"prompt": "A doctor examined"}


@pytest.mark.parametrize(
    "path, body, status, match",
    [
        ("/tokenize", {"prompt": "a", "messages": CHAT}, 400, "one of the two"),
        ("/tokenize", {}, 400, "one of the two"),
        ("/tokenize", {"prompt": "a", "promt": 1}, 400, "Unknown field(s): promt"),
        ("/tokenize", {"prompt": 3}, 400, "prompt must be a string"),
        ("/tokenize", {"messages": [{"role": "robot"}]}, 400, "needs a role"),
        ("/tokenize", {"prompt": "a", "model": "gpt-4"}, 404, "not served here"),
        ("/detokenize", {"tokens": [1, 10**9]}, 400, "tokens must be a list of token ids"),
        ("/detokenize", {"tokens": "abc"}, 400, "tokens must be a list of token ids"),
    ],
)  # fmt: skip
def test_bad_tokenizer_requests_are_one_line_errors(url, path, body, status, match):
    r = httpx.post(url + path, json=body)
    assert r.status_code == status and match in r.json()["error"]["message"], r.text


def test_version(url, demo):
    assert httpx.get(f"{url}/version").json() == {
        "version": hf_sae_steer.__version__, "engine": "transformers"}  # fmt: skip


def _samples(url) -> dict[tuple[str, tuple], float]:
    r = httpx.get(f"{url}/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out = {}
    for family in parser.text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_count_requests_tokens_and_latency_steered_and_base(url):
    base = {"prompt": "The children went", "max_tokens": 5, "ignore_eos": True, "temperature": 0}
    steered = {**base, "steering": [{"concept": "medical"}]}
    for body in (base, base, steered):
        assert httpx.post(f"{url}/v1/completions", json=body).status_code == 200
    assert httpx.post(f"{url}/v1/completions", json={"prompt": 1}).status_code == 400
    got = _samples(url)
    prompt = len(httpx.post(f"{url}/tokenize", json={"prompt": "The children went"}).json()[
        "tokens"])  # fmt: skip

    def value(name, **labels):
        return got[(name, tuple(sorted(labels.items())))]

    assert value("hf_sae_steer_requests_total", steering="base", finish_reason="length") == 2
    assert value("hf_sae_steer_requests_total", steering="steered", finish_reason="length") == 1
    assert value("hf_sae_steer_generation_tokens_total", steering="base") == 10
    assert value("hf_sae_steer_generation_tokens_total", steering="steered") == 5
    assert value("hf_sae_steer_prompt_tokens_total", steering="base") == 2 * prompt
    assert value("hf_sae_steer_request_latency_seconds_count", steering="steered") == 1
    assert value("hf_sae_steer_time_to_first_token_seconds_count", steering="base") == 2
    assert value("hf_sae_steer_request_latency_seconds_sum", steering="base") > 0
    assert value("hf_sae_steer_http_requests_total", path="/v1/completions", status="200") == 3
    assert value("hf_sae_steer_http_requests_total", path="/v1/completions", status="400") == 1
    assert value("hf_sae_steer_requests_running") == 0
    assert value("hf_sae_steer_requests_waiting") == 0
