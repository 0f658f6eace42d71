"""Reliability of SteeredModel: every decoding mode steers the same tokens, threads do not see
each other's state, steering cannot stack or leak through copies, absurd strengths are refused,
and low-precision models select latents in float32."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from sae_factories import openai_state
from tiny_models import tiny_gpt2

from hf_sae_steer import LatentEdit, SteeredModel, load_sae, remove_steering
from hf_sae_steer.cli.main import main
from hf_sae_steer.steering.interventions import Intervention

LAYER = 1
PROMPT = torch.tensor([[5, 17, 42, 99, 3]])
GREEDY = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}


def all_hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.fixture
def sae(tmp_path):
    path = tmp_path / "sae.pt"
    torch.save(openai_state(d=32, n=128, k=8, seed=5), path)
    return load_sae(path)


@pytest.fixture
def scores():
    return torch.rand(128, generator=torch.Generator().manual_seed(1))


def steer(model, sae, scores, positions="all", **kw):
    kw = {"method": "clamp", "clamp_value": 50.0, **kw}
    return SteeredModel(model, sae, layer=LAYER, scores=scores, positions=positions, **kw)


@pytest.mark.parametrize("positions", ["all", "prompt", "generated"])
def test_every_decoding_mode_steers_the_same_tokens(gpt2, sae, scores, positions):
    assistant = tiny_gpt2(400, seed=3)
    with steer(gpt2, sae, scores, positions) as steered:
        want = steered.generate(PROMPT, **GREEDY)
        with steered.disabled():
            base = gpt2.generate(PROMPT, **GREEDY)
        modes = {
            "model.generate": {},
            "assisted": {"assistant_model": assistant},
            "prompt lookup": {"prompt_lookup_num_tokens": 2},
            "no cache": {"use_cache": False},
            "static cache": {"cache_implementation": "static"},
        }
        for name, options in modes.items():
            got = gpt2.generate(PROMPT, **GREEDY, **options)
            assert torch.equal(got, want), f"{name} ({positions}) steered other tokens"
        beam = {**GREEDY, "num_beams": 3, "num_return_sequences": 3}
        cached = steered.generate(PROMPT, **beam)
        assert torch.equal(gpt2.generate(PROMPT, **beam, use_cache=False), cached)
    assert not torch.equal(want, base), "the steering must change this greedy continuation"
    assert all_hooks(gpt2) == 0


def test_threads_keep_their_own_state(gpt2, sae, scores):
    torch.set_num_threads(1)
    steered = steer(gpt2, sae, scores, "generated")
    try:
        want = steered.generate(PROMPT, **GREEDY)
        longer = torch.tensor([[5, 17, 42, 99, 3, 8, 8, 8]])
        want_longer = steered.generate(longer, **GREEDY)
        with steered.disabled():
            base = steered.generate(PROMPT, **GREEDY)
        wrong, stop = [], threading.Event()

        def steered_calls(prompt, expected):
            for _ in range(12):
                if not torch.equal(steered.generate(prompt, **GREEDY), expected):
                    wrong.append(prompt.shape[1])

        def unsteered_calls():
            while not stop.is_set():
                with steered.disabled():
                    if not torch.equal(gpt2.generate(PROMPT, **GREEDY), base):
                        wrong.append("disabled")

        threads = [threading.Thread(target=steered_calls, args=(PROMPT, want)),
                   threading.Thread(target=steered_calls, args=(longer, want_longer))]  # fmt: skip
        other = threading.Thread(target=unsteered_calls)
        other.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stop.set()
        other.join()
        assert wrong == []
    finally:
        steered.remove()


def test_a_steered_model_cannot_be_steered_again(gpt2, sae, scores):
    with steer(gpt2, sae, scores) as steered:
        hooks = all_hooks(gpt2)
        with pytest.raises(RuntimeError, match="already steered"):
            SteeredModel(steered, sae, layer=0, method="sae")
        assert all_hooks(gpt2) == hooks


def test_deep_copies_never_share_or_leak_steering(gpt2, sae, scores):
    base = gpt2(PROMPT).logits
    base_ids = gpt2.generate(PROMPT, **GREEDY)
    steered = steer(gpt2, sae, scores)
    steered_logits = steered(PROMPT).logits
    twin = copy.deepcopy(steered)  # an independent steered copy
    assert twin.model is not gpt2
    torch.testing.assert_close(twin(PROMPT).logits, steered_logits)
    plain_copy = copy.deepcopy(gpt2)  # a copy of the model itself is not steered
    torch.testing.assert_close(plain_copy(PROMPT).logits, base)
    assert torch.equal(plain_copy.generate(PROMPT, **GREEDY), base_ids)
    assert torch.equal(twin.model.generate(PROMPT, **GREEDY), steered.generate(PROMPT, **GREEDY))
    steered.remove()
    torch.testing.assert_close(twin(PROMPT).logits, steered_logits)  # unaffected by the original
    twin.remove()
    assert all_hooks(twin.model) == 0 and "generate" not in twin.model.__dict__
    assert remove_steering(plain_copy) == 0
    assert all_hooks(plain_copy) == 0 and "generate" not in plain_copy.__dict__
    assert all_hooks(gpt2) == 0 and "generate" not in gpt2.__dict__


def test_absurd_strengths_and_non_finite_results_are_refused(gpt2, sae, scores):
    with pytest.raises(ValueError, match="strength must be a finite number between"):
        steer(gpt2, sae, scores, strength=1e30)
    with steer(gpt2, sae, scores) as steered:
        with pytest.raises(ValueError, match="between -1000 and 1000"):
            steered.set_strength(float("inf"))
    assert all_hooks(gpt2) == 0
    with steer(gpt2, sae, scores, clamp_value=3e38, strength=1000.0) as steered:
        with pytest.raises(ValueError, match="NaN or infinite hidden states"):
            steered.generate(PROMPT, **GREEDY)
        with pytest.raises(ValueError, match="NaN or infinite hidden states"):
            steered(PROMPT)
        steered.set_strength(1.0)
        with pytest.raises(ValueError, match="NaN or infinite"):
            steered(PROMPT)  # finite where it is written, but the next blocks overflow
    assert all_hooks(gpt2) == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "options, named",
    [
        ({"method": "clamp", "clamp_value": 1e30}, "clamp_value=1e+30"),
        ({"method": "add", "latents": {3: 1e30}}, "the latents= weights (largest 1e+30)"),
        ({"method": "sae", "edits": [LatentEdit(3, 1e30, "pin")]}, "the edits= values"),
    ],
)
def test_overflow_after_the_hook_raises_through_generate(sae, scores, dtype, options, named):
    """Finite where it is written, the steered state overflows in the blocks after it (float32,
    bfloat16) or at once (float16): every path raises, naming what to lower; none returns text
    generated from NaN logits."""
    model = tiny_gpt2(400).to(dtype)
    message = f"NaN or infinite .* Lower .*{re.escape(named)}"
    with SteeredModel(model, sae, layer=LAYER, scores=scores, **options) as steered:
        for call in (steered.generate, model.generate):
            with pytest.raises(ValueError, match=message):
                call(PROMPT, **GREEDY)
        with pytest.raises(ValueError, match=message):
            steered(PROMPT)
        with steered.disabled():
            assert model.generate(PROMPT, **GREEDY).shape == (1, PROMPT.shape[1] + 6)
    assert all_hooks(model) == 0


def test_the_cli_refuses_an_overflowing_clamp_value_in_one_line(capsys):
    demo = Path(__file__).resolve().parents[1] / "storage" / "demo"
    code = main(["generate", "--model", str(demo / "model"), "--sae", str(demo / "sae"),
                 "--scores", str(demo / "scores"), "--prompt", "The children went",
                 "--methods", "clamp", "--clamp-value", "1e30", "--quiet"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "clamp_value=1e+30" in err


def test_low_precision_models_select_latents_in_float32(sae, scores):
    """TopK is a hard threshold: bfloat16 pre-activations tie, so a bfloat16 input is steered
    exactly as its float32 upcast would be, and one rounding step flips fewer selections."""
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(1000, 1, 32, generator=g) * 3).to(torch.bfloat16)
    step = Intervention(sae, "swap", scores)
    assert torch.equal(step(x), step(x.float()).to(torch.bfloat16))
    assert step._sae.dtype == torch.float32 and sae.dtype == torch.float32
    # One bfloat16 rounding step on one coordinate per row (padded vs packed batches).
    nudged = x.clone()
    col = torch.randint(0, 32, (1000,), generator=g)
    rows = torch.arange(1000)
    nudged[rows, 0, col] = (x[rows, 0, col].view(torch.int16) + 1).view(torch.bfloat16)

    def flips(model_sae, a, b):
        pick = [model_sae.code(model_sae.encode_pre(model_sae.preprocess(t)[0])).indices.sort(-1)
                .values for t in (a, b)]  # fmt: skip
        return int((pick[0] != pick[1]).any(-1).sum())

    bf16 = flips(sae.placed("cpu", torch.bfloat16), x, nudged)
    f32 = flips(sae, x.float(), nudged.float())
    assert f32 < bf16


def test_the_fingerprint_ignores_dtype_and_device(tmp_path, sae):
    path = tmp_path / "sae.pt"
    torch.save(openai_state(d=32, n=128, k=8, seed=5), path)
    assert load_sae(path, dtype=torch.bfloat16).fingerprint() == sae.fingerprint()
    assert sae.placed("cpu", torch.float16).fingerprint() == sae.fingerprint()
    other = load_sae(path)
    with torch.no_grad():
        other.W_dec.add_(1.0)
    assert other.fingerprint() != sae.fingerprint()  # a real change of weights still shows


def test_pipeline_admits_a_steered_model_built_before_pipelines_are_imported(tmp_path):
    code = (
        "import sys, logging, torch\n"
        "sys.path.insert(0, 'tests')\n"
        "from tiny_models import tiny_gpt2\n"
        "from sae_factories import openai_state\n"
        "from hf_sae_steer import SteeredModel, load_sae\n"
        f"torch.save(openai_state(d=32, n=128, k=8), {str(tmp_path / 'sae.pt')!r})\n"
        "m = tiny_gpt2(400)\n"
        f"s = SteeredModel(m, load_sae({str(tmp_path / 'sae.pt')!r}), layer=1, method='sae')\n"
        "assert 'transformers.pipelines.base' not in sys.modules\n"
        "from transformers.pipelines.base import SUPPORTED_PEFT_TASKS\n"
        "print('SteeredModel' in SUPPORTED_PEFT_TASKS['text-generation'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_messages_for_mistyped_specs_and_scores(gpt2, sae, scores, tmp_path):
    with pytest.raises(TypeError, match=r"tuple \(sae, layer, site\[, method"):
        SteeredModel(gpt2, [(sae, 1)])
    with pytest.raises(ValueError, match=r"scores must lie in \[0, 1\]"):
        SteeredModel(gpt2, sae, layer=LAYER, method="swap", scores=scores - 0.5)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SteeredModel(gpt2, sae, layer=LAYER, method="swap", scores=str(tmp_path / "none"))
    assert all_hooks(gpt2) == 0
