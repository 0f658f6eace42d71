"""Who may use the server: API keys, the Host header (DNS rebinding), web pages from other
sites (CORS, text/plain posts), the warning for a server open to the network, and no server
paths in any response."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

openai = pytest.importorskip("openai", reason="the serving tests use the official openai client")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi", reason="hf-sae-steer serve needs the [serve] extra")

from serving_live import DEMO, free_port, live_server, running_demo, wait_healthy  # noqa: E402

from hf_sae_steer.serving.security import (  # noqa: E402
    API_KEY_ENV,
    AccessPolicy,
    exposure_warning,
    redact_paths,
)

NAME = "hf-sae-steer-demo"
BODY = {"prompt": "The children went", "max_tokens": 3, "temperature": 0}


@pytest.fixture(scope="module")
def demo():
    with running_demo() as demo:
        yield demo


def _completed(engine) -> int:
    stats = engine.stats()
    return stats["completed"] + stats["errors"] + stats["cancelled"]


def test_an_api_key_guards_every_path_but_health(demo):
    engine, library = demo
    with live_server(engine, library, policy=AccessPolicy(api_key="s3cret")) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="s3cret", max_retries=0)
        r = client.completions.create(model=NAME, **BODY)
        assert r.usage.completion_tokens == 3
        assert [m.id for m in client.models.list().data] == [NAME]
        wrong = openai.OpenAI(base_url=f"{url}/v1", api_key="guess", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as caught:
            wrong.completions.create(model=NAME, **BODY)
        assert caught.value.status_code == 401
        assert caught.value.body["code"] == "invalid_api_key"
        before = _completed(engine)
        for path in ("/v1/models", "/v1/completions", "/metrics", "/nowhere"):
            method = "POST" if path == "/v1/completions" else "GET"
            r = httpx.request(method, url + path, json=BODY if method == "POST" else None)
            error = r.json()["error"]
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
            assert error["type"] == "invalid_request_error" and "Bearer" in error["message"]
        assert _completed(engine) == before  # nothing ran
        assert httpx.get(f"{url}/health").json()["status"] == "ok"


def test_the_key_comes_from_the_environment_when_not_given():
    assert AccessPolicy.from_options(environ={API_KEY_ENV: "k1"}).api_key == "k1"
    assert AccessPolicy.from_options(api_key="k2", environ={API_KEY_ENV: "k1"}).api_key == "k2"
    assert AccessPolicy.from_options(environ={API_KEY_ENV: ""}).api_key is None
    with pytest.raises(ValueError, match="--api-key is empty"):
        AccessPolicy(api_key=" ")
    with pytest.raises(ValueError, match="is not an origin"):
        AccessPolicy(allowed_origins=("ui.example",))


def test_a_cross_origin_text_plain_post_is_refused_before_it_runs(demo):
    """The issue's reproducer: a page on another site POSTs text/plain (no CORS preflight for
    that type) and the server ran it. Now: refused, nothing generated, no CORS header."""
    engine, library = demo
    with live_server(engine, library) as url:
        before = _completed(engine)
        raw = '{"prompt": "The children went", "max_tokens": 3}'
        page = {"origin": "http://evil.example", "content-type": "text/plain"}
        r = httpx.post(f"{url}/v1/completions", content=raw, headers=page)
        assert r.status_code == 403 and r.json()["error"]["code"] == "cross_origin_refused"
        assert "access-control-allow-origin" not in r.headers
        r = httpx.post(f"{url}/v1/completions", content=raw, headers={"content-type":
                                                                        "text/plain"})  # fmt: skip
        assert r.status_code == 415 and "application/json" in r.json()["error"]["message"]
        for kind in ("application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
            r = httpx.post(f"{url}/v1/chat/completions", content=raw,
                           headers={"content-type": kind})  # fmt: skip
            assert r.status_code == 415
        r = httpx.post(f"{url}/v1/completions", json=BODY, headers={"origin": "http://evil.example"})
        assert r.status_code == 403
        r = httpx.options(f"{url}/v1/completions", headers={
            "origin": "http://evil.example", "access-control-request-method": "POST"})  # fmt: skip
        assert "access-control-allow-origin" not in r.headers
        assert _completed(engine) == before
        # a client that is not a browser: no Origin, JSON (or no content type at all)
        assert httpx.post(f"{url}/v1/completions", json=BODY).status_code == 200
        r = httpx.post(f"{url}/v1/completions", content=raw.encode())
        assert r.status_code == 200, r.text


def test_allowed_origins_get_cors_and_no_others(demo):
    engine, library = demo
    ui = "http://localhost:3000"
    with live_server(engine, library, policy=AccessPolicy(allowed_origins=(ui,))) as url:
        pre = httpx.options(f"{url}/v1/completions", headers={
            "origin": ui, "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, content-type"})  # fmt: skip
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == ui
        r = httpx.post(f"{url}/v1/completions", json=BODY, headers={"origin": ui})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ui
        other = httpx.post(f"{url}/v1/completions", json=BODY, headers={"origin": "http://x.io"})
        assert other.status_code == 403 and "access-control-allow-origin" not in other.headers


@pytest.mark.parametrize(
    "policy, host, status",
    [
        (AccessPolicy(), "evil.example", 400),
        (AccessPolicy(), "evil.example:{port}", 400),
        (AccessPolicy(), "localhost:{port}", 200),
        (AccessPolicy(), "127.0.0.1:{port}", 200),
        (AccessPolicy(), "[::1]:{port}", 200),
        (AccessPolicy(), "10.1.2.3", 200),  # an IP literal cannot be a rebound name
        (AccessPolicy(allowed_hosts=("my.box",)), "my.box:{port}", 200),
        (AccessPolicy(allowed_hosts=("my.box",)), "evil.example", 400),
        (AccessPolicy(allowed_hosts=("*",)), "evil.example", 200),
    ],
)  # fmt: skip
def test_the_host_header_must_name_this_server(demo, policy, host, status):
    """DNS rebinding: a name the attacker resolves to 127.0.0.1 arrives as that Host header.
    Before: served. Now: 400 unless the name is the server's or allowed."""
    engine, library = demo
    with live_server(engine, library, policy=policy) as url:
        port = url.rsplit(":", 1)[1]
        r = httpx.get(f"{url}/v1/models", headers={"host": host.format(port=port)})
        assert r.status_code == status, r.text
        if status == 400:
            error = r.json()["error"]
            assert error["code"] == "invalid_host" and "--allowed-hosts" in error["message"]


def test_a_server_open_to_the_network_without_a_key_warns():
    assert "without an API key" in exposure_warning(AccessPolicy(bind="0.0.0.0"))
    assert "--api-key" in exposure_warning(AccessPolicy(bind="192.168.1.5"))
    assert exposure_warning(AccessPolicy(bind="0.0.0.0", api_key="k")) is None
    for bind in ("127.0.0.1", "localhost", "::1"):
        assert exposure_warning(AccessPolicy(bind=bind)) is None


def test_serve_on_all_interfaces_warns_and_takes_the_key_from_the_environment():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop(API_KEY_ENV, None)
    for key in (None, "from-env"):
        port = free_port()
        cmd = [sys.executable, "-m", "hf_sae_steer", "serve", "--port", str(port), "--quiet",
               "--host", "0.0.0.0"]  # fmt: skip
        run_env = env if key is None else {**env, API_KEY_ENV: key}
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=run_env)  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(url, timeout=120)
            r = httpx.post(f"{url}/v1/completions", json=BODY)
            if key is None:
                assert r.status_code == 200
            else:
                assert r.status_code == 401
                auth = {"authorization": f"Bearer {key}"}
                assert httpx.post(f"{url}/v1/completions", json=BODY, headers=auth).is_success
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=30)
        warned = "without an API key" in err
        assert warned == (key is None), err


def test_no_response_shows_a_path_on_the_server(demo):
    """/v1/models showed each concept's absolute path; a failure inside the engine showed the
    paths in its exception. Now neither does (the server's log keeps them)."""
    engine, library = demo
    secret = str(DEMO.resolve())
    with live_server(engine, library) as url:
        models = httpx.get(f"{url}/v1/models")
        assert secret not in models.text and str(DEMO.parent) not in models.text
        assert "source" not in models.json()["concepts"][0]
        ids = engine.tokenizer("The zebra")["input_ids"]

        def fail(module, args, kwargs):
            if bool((kwargs["input_ids"] == ids[-1]).any()):
                raise FileNotFoundError(f"No such file: '{secret}/weights/extra.bin'")

        handle = library.model.register_forward_pre_hook(fail, with_kwargs=True)
        try:
            r = httpx.post(f"{url}/v1/completions", json={**BODY, "prompt": "The zebra"})
        finally:
            handle.remove()
        assert r.status_code == 500 and "extra.bin" in r.text
        assert secret not in r.text and "/weights/" not in r.text
        assert httpx.post(f"{url}/v1/completions", json=BODY).status_code == 200


def test_redacted_paths_keep_the_file_name():
    assert redact_paths("No such file: '/home/alice/m/x.bin'") == "No such file: '.../x.bin'"
    assert redact_paths(r"C:\Users\bob\m.bin broken") == ".../m.bin broken"
    assert redact_paths("a relative a/b path and GET /health") == (
        "a relative a/b path and GET /health"
    )
