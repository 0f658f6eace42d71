"""Unsupported architectures, explicit overrides, layer ranges, tuple outputs and accelerate:
real tiny models, expected values from plain hooks (no mocks)."""

from __future__ import annotations

import functools
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from arch_models import (
    BATCH,
    SEQ,
    VOCAB,
    D,
    captured,
    hidden_states,
    hooks,
    ids,
    inputs,
    llama_like,
    logits,
    model_for,
    random_scores,
    tiny_sae,
    vector,
)
from torch import Tensor, nn

from hf_sae_steer.sites.hooks import hook_site, run_to_site
from hf_sae_steer.sites.layouts import find_layout
from hf_sae_steer.sites.names import Site
from hf_sae_steer.steering.steered import SteeredModel

# -- 5. unsupported architectures and explicit overrides --------------------------------------


@functools.cache
def _bloom() -> nn.Module:
    from transformers import BloomConfig, BloomForCausalLM

    torch.manual_seed(0)
    config = BloomConfig(vocab_size=VOCAB, hidden_size=D, n_layer=2, n_head=4)
    return BloomForCausalLM(config).eval()


def test_unsupported_architecture_says_what_to_pass() -> None:
    model = _bloom()
    with pytest.raises(ValueError) as err:
        find_layout(model)
    message = str(err.value)
    assert "bloom" in message and "BloomForCausalLM" in message
    assert "blocks=" in message
    for supported in ("gpt2", "gpt_neo", "gpt_neox", "opt", "llama", "mistral", "qwen2"):
        assert supported in message
    for supported in ("qwen3", "gemma", "gemma2", "gemma3_text", "phi", "phi3"):
        assert supported in message
    assert "\n" not in message

    class NoConfig(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList([nn.Linear(4, 4)])

    with pytest.raises(ValueError, match=r"NoConfig \(model_type=None\).*blocks="):
        find_layout(NoConfig())


def test_explicit_override_reads_and_steers_an_unsupported_model() -> None:
    model = _bloom()
    layout = find_layout(model, blocks="transformer.h", attn="self_attention", mlp="mlp")
    assert layout.n_layers == 2 and layout.blocks is model.transformer.h
    assert layout.decoder is model.transformer
    hidden = hidden_states(model)
    for layer in range(2):
        got = run_to_site(model, layout, Site(layer, "resid_pre"), **inputs())
        torch.testing.assert_close(got, hidden[layer], rtol=0, atol=0)
    x0 = run_to_site(model, layout, Site(0, "resid_post"), **inputs())
    torch.testing.assert_close(x0, hidden[1], rtol=0, atol=0)

    baseline = hooks(model)
    base = logits(model)
    sae = tiny_sae(layer=0, site="resid_post")
    steered = SteeredModel(
        model,
        sae,
        layer=0,
        method="clamp",
        scores=random_scores(),
        clamp_value=20.0,
        blocks="transformer.h",
    )
    try:
        with captured(model.transformer.h[0]) as post:
            out = steered(**inputs(), use_cache=False).logits
        assert not torch.allclose(out, base, atol=1e-4)
        # the block output is exactly the intervention applied to the unsteered one
        torch.testing.assert_close(post[0], steered.interventions[0](x0), rtol=1e-5, atol=1e-6)
        with steered.disabled():
            assert torch.equal(steered(**inputs(), use_cache=False).logits, base)
    finally:
        steered.remove()
    assert torch.equal(logits(model), base)
    assert hooks(model) == baseline


def test_bad_overrides_are_clear_errors() -> None:
    model = _bloom()
    baseline = hooks(model)
    for path in ("transformer.ln_f", "transformer.nope", "transformer", "lm_head.weight"):
        with pytest.raises(ValueError, match=r"blocks=.*nn\.ModuleList"):
            find_layout(model, blocks=path)
    layout = find_layout(model, blocks="transformer.h", attn="nope", mlp="mlp")
    with pytest.raises(ValueError, match="no submodule 'nope'.*attn="):
        hook_site(layout, Site(0, "attn_out"), lambda x: x)
    with pytest.raises(ValueError, match="no submodule 'nope'"):
        run_to_site(model, layout, Site(1, "attn_out"), **inputs())
    with pytest.raises(ValueError, match=r"nn\.ModuleList"):
        SteeredModel(model, tiny_sae(), layer=0, site="resid_post", blocks="transformer.ln_f")
    assert hooks(model) == baseline  # nothing left behind by the failed calls


# -- 6. layer range ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gpt2", "gemma2"])
def test_layer_out_of_range_and_negative_layers(name: str) -> None:
    model = model_for(name)
    layout = find_layout(model)
    n = layout.n_layers
    for bad in (n, n + 5, -n - 1):
        with pytest.raises(ValueError, match=rf"{n} blocks.*0\.\.{n - 1}"):
            layout.check_layer(bad)
        with pytest.raises(ValueError, match=rf"0\.\.{n - 1}"):
            hook_site(layout, Site(bad, "resid_post"), lambda x: x)
        with pytest.raises(ValueError, match=rf"0\.\.{n - 1}"):
            run_to_site(model, layout, Site(bad, "resid_post"), **inputs())
        with pytest.raises(ValueError, match=rf"0\.\.{n - 1}"):
            SteeredModel(model, tiny_sae(), layer=bad, site="resid_post")
    for kind in ("resid_pre", "resid_post", "mlp_out"):
        last = run_to_site(model, layout, Site(-1, kind), **inputs())
        torch.testing.assert_close(
            last, run_to_site(model, layout, Site(n - 1, kind), **inputs()), rtol=0, atol=0
        )
    x = run_to_site(model, layout, Site(n - 1, "resid_post"), **inputs())
    steered = SteeredModel(model, tiny_sae(), layer=-1, site="resid_post", method="sae")
    try:
        assert steered.sites == [Site(n - 1, "resid_post")]
        with captured(layout.blocks[n - 1]) as post:
            steered(**inputs(), use_cache=False)
        torch.testing.assert_close(post[0], steered.interventions[0](x))
    finally:
        steered.remove()


# -- 7. blocks that return tuples -------------------------------------------------------------


class TupleBlock(nn.Module):
    def __init__(self, d: int, as_list: bool) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.attn = nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.as_list = as_list

    def forward(self, hidden_states: Tensor, extra: Any = None) -> Any:
        h = hidden_states + self.attn(self.ln(hidden_states))
        h = h + self.mlp(self.ln(h))
        return [h, None] if self.as_list else (h, None)


class TupleDecoder(nn.Module):
    """A hand-made decoder: blocks return ``(hidden, None)``; a config-like attribute."""

    def __init__(self, n_layers: int = 2, as_list: bool = False) -> None:
        super().__init__()
        self.config = SimpleNamespace(model_type="tiny_tuple", hidden_size=D)
        self.embed = nn.Embedding(VOCAB, D)
        self.layers = nn.ModuleList([TupleBlock(D, as_list) for _ in range(n_layers)])
        self.head = nn.Linear(D, VOCAB)

    def forward(self, input_ids: Tensor, **kwargs: Any) -> Tensor:
        h = self.embed(input_ids)
        for block in self.layers:
            h = block(h, extra="kept")[0]
        return self.head(h)


@pytest.mark.parametrize("as_list", [False, True], ids=["tuple", "list"])
def test_tuple_block_outputs_come_back_in_kind(as_list: bool) -> None:
    torch.manual_seed(0)
    model = TupleDecoder(as_list=as_list).eval()
    with pytest.raises(ValueError, match="tiny_tuple"):
        find_layout(model)
    layout = find_layout(model, blocks="layers")
    assert layout.decoder is model
    input_ids = ids()
    with torch.no_grad():
        base = model(input_ids)
        with captured(model.layers[0]) as ref:
            model(input_ids)
    v = vector(seed=7)
    seen: list[Any] = []
    handles = hook_site(layout, Site(0, "resid_post"), lambda x: x + v)
    # registered after ours, so it sees what the block hands on
    handles.append(model.layers[0].register_forward_hook(lambda m, a, out: seen.append(out)))
    try:
        with torch.no_grad():
            edited = model(input_ids)
    finally:
        for handle in handles:
            handle.remove()
    (out,) = seen
    assert type(out) is (list if as_list else tuple) and len(out) == 2 and out[1] is None
    assert torch.equal(out[0], ref[0] + v)
    assert not torch.allclose(edited, base)
    got = run_to_site(model, layout, Site(1, "resid_pre"), input_ids=input_ids)
    assert torch.equal(got, ref[0])
    with torch.no_grad():
        assert torch.equal(model(input_ids), base)

    # attn_out / mlp_out / resid_mid work through the same override
    layout = find_layout(model, blocks="layers", attn="attn", mlp="mlp")
    x_pre = run_to_site(model, layout, Site(0, "resid_pre"), input_ids=input_ids)
    x_attn = run_to_site(model, layout, Site(0, "attn_out"), input_ids=input_ids)
    x_mid = run_to_site(model, layout, Site(0, "resid_mid"), input_ids=input_ids)
    torch.testing.assert_close(x_mid, x_pre + x_attn, rtol=0, atol=0)

    steered = SteeredModel(
        model,
        tiny_sae(),
        layer=0,
        site="resid_post",
        blocks="layers",
        method="clamp",
        scores=random_scores(),
        clamp_value=20.0,
    )
    try:
        with torch.no_grad():
            assert not torch.allclose(steered(input_ids), base)
    finally:
        steered.remove()
    with torch.no_grad():
        assert torch.equal(model(input_ids), base)


# -- 8. accelerate device_map="auto" ----------------------------------------------------------


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**llama_like(3)))
    path = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(path)
    return path


def _generate_kwargs() -> dict[str, Any]:
    return {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}


def test_accelerate_device_map_auto_is_steered(llama_dir) -> None:
    from transformers import AutoModelForCausalLM

    # On a CPU-only machine accelerate places everything on "cpu" (no dispatch hooks needed).
    model = AutoModelForCausalLM.from_pretrained(llama_dir, device_map="auto").eval()
    assert model.device.type == "cpu"
    baseline = hooks(model)
    sae = tiny_sae(layer=1, site="resid_post")
    with torch.no_grad():
        plain = model.generate(**inputs(), **_generate_kwargs())
    steered = SteeredModel(model, sae, method="clamp", scores=random_scores(), clamp_value=50.0)
    try:
        assert steered.sites == [Site(1, "resid_post")]
        out = steered.generate(**inputs(), **_generate_kwargs())
        with steered.disabled():
            base = steered.generate(**inputs(), **_generate_kwargs())
        assert torch.equal(base, plain)
        assert out.shape == plain.shape
        assert not torch.equal(out[:, SEQ:], plain[:, SEQ:])
    finally:
        steered.remove()
    assert hooks(model) == baseline
    with torch.no_grad():
        assert torch.equal(model.generate(**inputs(), **_generate_kwargs()), plain)


def test_accelerate_bfloat16_sae_follows_the_block(llama_dir) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        llama_dir, device_map="auto", dtype=torch.bfloat16
    ).eval()
    assert next(model.model.layers[1].parameters()).dtype == torch.bfloat16
    sae = tiny_sae(layer=1, site="resid_post")
    steered = SteeredModel(model, sae, method="clamp", scores=random_scores(), clamp_value=50.0)
    try:
        with torch.no_grad():
            logits = steered(**inputs(), use_cache=False).logits
            with steered.disabled():
                base = steered(**inputs(), use_cache=False).logits
        assert logits.dtype == torch.bfloat16
        assert not torch.equal(logits, base)
        step = steered.interventions[0]
        assert step.sae is sae
        # The SAE computes in float32 beside a bfloat16 block: TopK is a hard threshold.
        assert step._sae.dtype == torch.float32
        assert sae.dtype == torch.float32 and sae.W_dec.dtype == torch.float32
        out = steered.generate(**inputs(), **_generate_kwargs())
        assert out.shape == (BATCH, SEQ + 6)
        assert step._sae.dtype == torch.float32 and sae.dtype == torch.float32
    finally:
        steered.remove()


def test_accelerate_offloaded_blocks_are_steered_like_the_plain_model(llama_dir) -> None:
    """accelerate's hooks (weights kept on the meta device until each block runs) keep the
    steering exactly as on the plain model; the SAE is placed from the hidden state."""
    from accelerate import cpu_offload
    from transformers import AutoModelForCausalLM

    sae = tiny_sae(layer=1, site="resid_post")
    kwargs = {"method": "clamp", "scores": random_scores(), "clamp_value": 50.0}
    plain = AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    with SteeredModel(plain, sae, **kwargs) as steered:
        expected = steered.generate(**inputs(), **_generate_kwargs())
    model = AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    cpu_offload(model, execution_device=torch.device("cpu"))
    assert all(p.device.type == "meta" for p in model.model.layers[1].parameters())
    with SteeredModel(model, sae, **kwargs) as steered:
        got = steered.generate(**inputs(), **_generate_kwargs())
        with steered.disabled():
            base = steered.generate(**inputs(), **_generate_kwargs())
        assert steered.interventions[0]._sae.dtype == torch.float32
    assert torch.equal(got, expected)
    assert not torch.equal(got[:, SEQ:], base[:, SEQ:])
