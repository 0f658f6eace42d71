"""Hook sites on real tiny models of every supported architecture (no mocks).

Every expected value here is read independently of ``hf_sae_steer.sites``: from
``output_hidden_states`` or from plain forward hooks written in this file on the modules that
the Hugging Face code adds to the residual stream.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from arch_models import (
    ARCH_NAMES,
    ARCH_SITES,
    ARCHS,
    BATCH,
    SEQ,
    SEQUENTIAL,
    SITE_KINDS,
    D,
    adding,
    as_bsd,
    block_input,
    blocks,
    captured,
    first,
    hidden_states,
    hooks,
    inputs,
    logits,
    model_for,
    random_scores,
    reference,
    sub,
    tiny_sae,
    vector,
)
from torch import Tensor, nn

from hf_sae_steer.sites.hooks import hook_site, run_to_site
from hf_sae_steer.sites.layouts import find_layout
from hf_sae_steer.sites.names import Site
from hf_sae_steer.steering.steered import SteeredModel, SteeringSpec

# -- 1. layouts and names ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ARCH_NAMES)
def test_find_layout_finds_the_blocks(name: str) -> None:
    model, arch = model_for(name), ARCHS[name]
    layout = find_layout(model)
    assert layout.n_layers == arch.n_layers == len(layout.blocks)
    assert layout.blocks is blocks(name)
    assert layout.blocks_path == arch.blocks
    assert layout.parallel == arch.parallel
    for layer in range(arch.n_layers):
        assert layout.sublayer(layer, layout.attn) is sub(name, layer, "attn")
        assert layout.sublayer(layer, layout.mlp) is sub(name, layer, "mlp")


@pytest.mark.parametrize("name", ARCH_NAMES)
def test_find_layout_on_the_bare_decoder(name: str) -> None:
    """The base model (no LM head) is found too: its blocks are the same ModuleList."""
    model = model_for(name)
    bare = model.base_model
    assert find_layout(bare).blocks is blocks(name)


def test_hook_names_are_transformer_lens_names() -> None:
    expected = {
        "resid_pre": "blocks.{}.hook_resid_pre",
        "resid_mid": "blocks.{}.hook_resid_mid",
        "resid_post": "blocks.{}.hook_resid_post",
        "attn_out": "blocks.{}.hook_attn_out",
        "mlp_out": "blocks.{}.hook_mlp_out",
    }
    for layer in (0, 1, 7, 25):
        for kind, pattern in expected.items():
            assert Site(layer, kind).hook_name == pattern.format(layer)
    with pytest.raises(ValueError, match="resid_post"):
        Site(0, "resid_postt")


# -- 2. run_to_site reads the right tensor ----------------------------------------------------


@pytest.mark.parametrize(("name", "kind"), ARCH_SITES)
def test_run_to_site_reads_the_right_tensor(name: str, kind: str) -> None:
    model, arch = model_for(name), ARCHS[name]
    layout = find_layout(model)
    if kind == "resid_mid" and arch.parallel:
        with pytest.raises(ValueError, match="resid_mid.*parallel"):
            run_to_site(model, layout, Site(0, kind), **inputs())
        return
    hidden = hidden_states(model)
    assert len(hidden) == arch.n_layers + 1
    baseline = hooks(model)
    for layer in range(arch.n_layers):
        ref = reference(name, layer)
        got = run_to_site(model, layout, Site(layer, kind), **inputs())
        assert got.shape == (BATCH, SEQ, D), f"{kind} of layer {layer} has shape {got.shape}"
        torch.testing.assert_close(got, ref[kind], rtol=0, atol=0)
        # Independent of any hook: the hidden states transformers reports.
        if kind == "resid_pre":
            torch.testing.assert_close(got, hidden[layer], rtol=0, atol=0)
        if kind == "resid_post" and layer < arch.n_layers - 1:
            torch.testing.assert_close(got, hidden[layer + 1], rtol=0, atol=0)
        if kind == "resid_mid" and name == "gpt2":
            torch.testing.assert_close(got, ref["resid_post"] - ref["mlp_out"])
    assert hooks(model) == baseline


def test_gpt2_sites_add_up() -> None:
    """GPT-2 across all sites at once: pre + attn = mid, mid + mlp = post."""
    model = model_for("gpt2")
    layout = find_layout(model)
    for layer in range(layout.n_layers):
        s = {k: run_to_site(model, layout, Site(layer, k), **inputs()) for k in SITE_KINDS}
        torch.testing.assert_close(s["resid_mid"], s["resid_pre"] + s["attn_out"])
        torch.testing.assert_close(s["resid_mid"], s["resid_post"] - s["mlp_out"])
        torch.testing.assert_close(s["resid_post"], s["resid_mid"] + s["mlp_out"])


@pytest.mark.parametrize("name", ["gpt2", "llama", "gemma2", "phi"])
def test_run_to_site_stops_at_the_site(name: str) -> None:
    """Later blocks and the LM head never run."""
    model = model_for(name)
    layout = find_layout(model)
    calls: list[str] = []
    watched = [(f"block{i}", b) for i, b in enumerate(layout.blocks)]
    watched.append(("lm_head", model.get_output_embeddings()))
    handles = [
        module.register_forward_pre_hook(lambda m, a, tag=tag: calls.append(tag))
        for tag, module in watched
    ]
    try:
        run_to_site(model, layout, Site(0, "resid_post"), **inputs())
        assert calls == ["block0"]
        calls.clear()
        run_to_site(model, layout, Site(layout.n_layers - 1, "resid_post"), **inputs())
        assert "lm_head" not in calls
        assert len(calls) == layout.n_layers
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("name", ["gpt2", "llama", "gemma3_text"])
def test_output_hidden_states_report_the_steered_stream(name: str) -> None:
    """With resid_post steered, hidden_states[L+1] is what block L+1 actually receives, even
    when transformers' own recording hooks were installed first (``model_for`` ran the model
    with output_hidden_states=True before any steering, as a user may well have done)."""
    model = model_for(name)
    layout = find_layout(model)
    layer = 0
    v = vector(seed=13)
    handles = hook_site(layout, Site(layer, "resid_post"), lambda x: x + v)
    try:
        with captured(layout.blocks[layer + 1], inputs=True) as next_input:
            hidden = hidden_states(model)
    finally:
        for handle in handles:
            handle.remove()
    assert torch.equal(hidden[layer + 1], next_input[0])


# -- 3. edits through hook_site ---------------------------------------------------------------


def _plain_add(name: str, kind: str, layer: int, v: Tensor):
    """The hand-written hook that adds ``v`` at a site (resid_mid: to the attention output)."""
    block = blocks(name)[layer]
    if kind == "resid_pre":
        return adding(block, v, to_input=True)
    if kind == "resid_post":
        return adding(block, v)
    return adding(sub(name, layer, "mlp" if kind == "mlp_out" else "attn"), v)


@pytest.mark.parametrize(("name", "kind"), ARCH_SITES)
def test_edits_at_each_site(name: str, kind: str) -> None:
    model, arch = model_for(name), ARCHS[name]
    if kind == "resid_mid" and arch.parallel:
        with pytest.raises(ValueError, match="resid_mid"):
            hook_site(find_layout(model), Site(0, kind), lambda x: x)
        return
    layout = find_layout(model)
    layer = 1
    site = Site(layer, kind)
    baseline = hooks(model)
    base = logits(model)

    # identity: bit-identical logits
    handles = hook_site(layout, site, lambda x: x.clone())
    try:
        same = logits(model)
    finally:
        for handle in handles:
            handle.remove()
    assert torch.equal(same, base), f"identity edit at {site.hook_name} changed the logits"
    assert hooks(model) == baseline

    # a fixed vector: changes the logits exactly as a hand-written hook does
    v = vector()
    handles = hook_site(layout, site, lambda x: x + v)
    try:
        edited = logits(model)
    finally:
        for handle in handles:
            handle.remove()
    assert not torch.allclose(edited, base, atol=1e-4)
    with _plain_add(name, kind, layer, v):
        manual = logits(model)
    if kind == "resid_mid":  # (pre + attn + v) - pre vs attn + v: rounding only
        torch.testing.assert_close(edited, manual, rtol=1e-5, atol=1e-5)
    else:
        assert torch.equal(edited, manual)

    # removed: the model is back, with no hook of ours left anywhere
    assert torch.equal(logits(model), base)
    assert hooks(model) == baseline


# -- 4. resid_mid semantics -------------------------------------------------------------------


@pytest.mark.parametrize("name", SEQUENTIAL)
def test_resid_mid_edit_equals_adding_to_attention_output(name: str) -> None:
    """resid_mid = resid_pre + attn_out, so adding v to one adds it to the other, everywhere."""
    model = model_for(name)
    layout = find_layout(model)
    v = vector(seed=5)
    for layer in range(layout.n_layers):
        handles = hook_site(layout, Site(layer, "resid_mid"), lambda x: x + v)
        try:
            with captured(blocks(name)[layer]) as post:
                via_site = logits(model)
        finally:
            for handle in handles:
                handle.remove()
        with captured(blocks(name)[layer]) as manual_post, adding(sub(name, layer, "attn"), v):
            manual = logits(model)
        torch.testing.assert_close(post[0], manual_post[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(via_site, manual, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", SEQUENTIAL)
def test_resid_mid_edit_is_seen_by_the_mlp_and_the_stream(name: str) -> None:
    """A resid_mid edit replaces the stream there: resid_mid reads back as edit(resid_mid)."""
    model = model_for(name)
    layout = find_layout(model)
    layer = 0
    ref = reference(name, layer)
    v = vector(seed=6)
    handles = hook_site(layout, Site(layer, "resid_mid"), lambda x: 2.0 * x + v)
    try:
        with captured(blocks(name)[layer]) as post, captured(sub(name, layer, "mlp")) as mlp:
            model(**inputs(), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    edited_mid = post[0] - as_bsd(mlp[0])
    torch.testing.assert_close(edited_mid, 2.0 * ref["resid_mid"] + v, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["gpt2", "llama", "gemma2"])
def test_resid_pre_and_resid_mid_on_one_block_compose_in_stream_order(name: str) -> None:
    """Steering resid_pre and resid_mid of one block: resid_mid must read the stream as edited
    at resid_pre, whichever order the specs are listed in."""
    model = model_for(name)
    layer = 1
    block, attn = blocks(name)[layer], sub(name, layer, "attn")
    sae_pre = tiny_sae(layer=layer, site="resid_pre", seed=11)
    sae_mid = tiny_sae(layer=layer, site="resid_mid", seed=12)
    pre_spec = SteeringSpec(sae_pre, method="clamp", scores=random_scores(), clamp_value=5.0)
    mid_spec = SteeringSpec(sae_mid, method="sae")
    baseline = hooks(model)

    # By hand: x' = f_pre(x) enters the block; resid_mid becomes f_mid(x' + attn(x')).
    with SteeredModel(model, [pre_spec, mid_spec]) as steered:
        f_pre, f_mid = steered.interventions
        with steered.disabled():
            edited_input: list[Tensor] = []

            def pre(m: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
                x = f_pre(block_input(args, kwargs))
                edited_input[:] = [x]
                if args:
                    return (x, *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": x}

            def mid(m: nn.Module, args: tuple, out: Any) -> Any:
                x = edited_input[0]
                new = f_mid(x + first(out)) - x
                return (new, *out[1:]) if isinstance(out, tuple) else new

            handles = [
                block.register_forward_pre_hook(pre, with_kwargs=True),
                attn.register_forward_hook(mid),
            ]
            try:
                expected = logits(model)
            finally:
                for handle in handles:
                    handle.remove()

    for specs, order in (([pre_spec, mid_spec], "pre, mid"), ([mid_spec, pre_spec], "mid, pre")):
        with SteeredModel(model, specs):
            got = logits(model)
        diff = (got - expected).abs().max().item()
        assert diff < 1e-5, f"specs listed ({order}): logits off by {diff:.3g}"
    assert hooks(model) == baseline
