"""The transformers engine behind the HTTP front end: one request cannot hurt another."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi", reason="hf-sae-steer serve needs the [serve] extra")

from serving_live import live_server, running_demo  # noqa: E402

INNOCENT = {"prompt": "The children went", "max_tokens": 12, "temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def demo():
    with running_demo() as (engine, library), live_server(engine, library) as url:
        yield url, engine


def _post(url, body):
    return httpx.post(f"{url}/v1/completions", json=body, timeout=120)


def _stream(url, body):
    with httpx.stream("POST", f"{url}/v1/completions", json={**body, "stream": True},
                      timeout=120) as r:  # fmt: skip
        return [line for line in r.iter_lines() if line]


@pytest.mark.parametrize("sampling", [{"temperature": 1e-40}, {"top_p": 1e-300}])
def test_a_request_with_overflowing_sampling_fails_no_other_request(demo, sampling):
    """The issue's reproducer: beside 8 innocent requests and one stream, a request whose
    temperature or top_p overflows the sampler. Before the fix all of them got 500 (the stream
    an error event); now every innocent one gets exactly what it gets alone."""
    url, engine = demo
    alone = _post(url, INNOCENT).json()["choices"][0]["text"]
    bad = {"prompt": "The cat", "max_tokens": 12, "ignore_eos": True, **sampling}
    with ThreadPoolExecutor(10) as pool:
        innocent = [pool.submit(_post, url, INNOCENT) for _ in range(8)]
        stream = pool.submit(_stream, url, INNOCENT)
        culprit = pool.submit(_post, url, bad)
        replies = [f.result() for f in innocent]
        lines, culprit = stream.result(), culprit.result()
    assert [r.status_code for r in replies] == [200] * 8
    assert all(r.json()["choices"][0]["text"] == alone for r in replies)
    assert lines[-1] == "data: [DONE]" and '"finish_reason":"length"' in lines[-2]
    assert "error" not in "".join(lines)
    assert culprit.status_code in (200, 400), culprit.text  # greedy, or refused as a bad value
    assert engine.stats()["errors"] == 0
