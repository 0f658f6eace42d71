"""Request bodies the JSON decoder accepts but the server cannot use: 400, never 500."""

from __future__ import annotations

import json

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi", reason="hf-sae-steer serve needs the [serve] extra")

from serving_live import live_server, running_demo  # noqa: E402

from hf_sae_steer.serving.body import MAX_DEPTH, parse_json  # noqa: E402
from hf_sae_steer.serving.errors import RequestError  # noqa: E402


@pytest.fixture(scope="module")
def demo():
    with running_demo() as demo, live_server(*demo) as url:
        yield url


def _post(url, path, raw):
    return httpx.post(f"{url}/v1/{path}", content=raw, timeout=60,
                      headers={"content-type": "application/json"})  # fmt: skip


LONE = b'"The patient \\udc00 was"'
BODIES = [
    ("completions", b'{"max_tokens": 2, "prompt": ' + LONE + b"}", "prompt has a lone surrogate"),
    ("chat/completions", b'{"max_tokens": 2, "messages": [{"role": "user", "content": '
     + LONE + b"}]}", "messages has a lone surrogate"),
    ("chat/completions", b'{"max_tokens": 2, "messages": [{"role": "user", "content": '
     b'[{"type": "text", "text": "\\ud800"}]}]}', "messages has a lone surrogate"),
    ("completions", b'{"prompt": "a", "stop": ["\\udfff"]}', "stop has a lone surrogate"),
    # UTF-8 bytes of a surrogate: Python's decoder lets them through ("surrogatepass")
    ("completions", '{"prompt": "a\udc00"}'.encode("utf-8", "surrogatepass"),
     "prompt has a lone surrogate"),
    ("completions", b"[" * 200_000, "nested too deeply"),
    ("completions", b'{"prompt": ' + b"[" * 200_000 + b"]" * 200_000 + b"}", "nested too deeply"),
    ("chat/completions", b'{"messages": ' + b"[" * 900 + b"]" * 900 + b"}", "nested too deeply"),
]  # fmt: skip


@pytest.mark.parametrize("path, raw, match", BODIES)
def test_lone_surrogates_and_deep_nesting_are_400(demo, path, raw, match):
    """The issue's reproducers ("\\udc00" in a prompt, ~200 KB of "["): were 500 (TypeError
    from the tokenizer, RecursionError from the decoder) with a traceback in the log."""
    r = _post(demo, path, raw)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert match in error["message"] and error["type"] == "invalid_request_error"
    ok = _post(demo, "completions", json.dumps({"prompt": "a \u00e9\U0001f600", "max_tokens": 2}))
    assert ok.status_code == 200


def test_valid_unicode_and_moderate_nesting_pass():
    text = "caf\u00e9 \U0001f600 \ud55c\uad6d\uc5b4"
    body = {"prompt": text, "steering": [{"latents": {"3": 1.0}}]}
    assert parse_json(json.dumps(body).encode()) == body  # \\u escapes, pairs included
    assert parse_json(json.dumps(body, ensure_ascii=False).encode()) == body
    deep = json.loads("[" * MAX_DEPTH + "]" * MAX_DEPTH)
    assert parse_json(json.dumps({"metadata": deep}).encode()) == {"metadata": deep}
    with pytest.raises(RequestError, match="nested too deeply"):
        parse_json(json.dumps({"metadata": [deep]}).encode())
    with pytest.raises(RequestError, match=r"a lone surrogate \('\\ud83d' at character 1\)"):
        parse_json(b'{"user": "x\\ud83d"}')
