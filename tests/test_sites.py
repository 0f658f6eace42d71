"""Hook sites on real tiny models of every supported architecture (no mocks).

Every expected value here is read independently of ``hf_sae_steer.sites``: from
``output_hidden_states`` or from plain forward hooks written in this file on the modules that
the Hugging Face code adds to the residual stream.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any, NamedTuple

import pytest
import torch
from torch import Tensor, nn

from hf_sae_steer.sae import SAEConfig, build_sae
from hf_sae_steer.sites import Site, find_layout, hook_site, run_to_site
from hf_sae_steer.steered import SteeredModel, SteeringSpec

VOCAB = 128
D = 32
BATCH, SEQ = 2, 6
SITE_KINDS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")


# -- the architectures ------------------------------------------------------------------------


class Arch(NamedTuple):
    """How to build a tiny model, and (written here, from the HF code) where its blocks are."""

    build: Callable[[], nn.Module]
    n_layers: int
    blocks: str  # dotted path from the *ForCausalLM
    attn: str  # module inside a block whose output is added to the stream after attention
    mlp: str  # same for the MLP
    parallel: bool  # attention and MLP read the same input: no resid_mid


_TOKENS = {"vocab_size": VOCAB, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}


def _llama_like(n_layers: int) -> dict[str, Any]:
    return {
        "hidden_size": D,
        "intermediate_size": 64,
        "num_hidden_layers": n_layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "max_position_embeddings": 64,
        **_TOKENS,
    }


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(
        GPT2Config(n_layer=3, n_embd=D, n_head=4, n_inner=64, n_positions=64, **_TOKENS)
    )


def _gpt_neo():
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    config = GPTNeoConfig(
        num_layers=2,
        attention_types=[[["global", "local"], 1]],
        hidden_size=D,
        num_heads=4,
        intermediate_size=64,
        window_size=4,
        max_position_embeddings=64,
        **_TOKENS,
    )
    return GPTNeoForCausalLM(config)


def _gpt_neox(parallel: bool):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(
        hidden_size=D,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        use_parallel_residual=parallel,
        **_TOKENS,
    )
    return GPTNeoXForCausalLM(config)


def _opt():
    from transformers import OPTConfig, OPTForCausalLM

    config = OPTConfig(
        hidden_size=D,
        word_embed_proj_dim=D,
        num_hidden_layers=3,
        ffn_dim=64,
        num_attention_heads=4,
        max_position_embeddings=64,
        **_TOKENS,
    )
    return OPTForCausalLM(config)


def _hf(config_name: str, model_name: str, n_layers: int, **extra: Any):
    def build():
        import transformers

        config = getattr(transformers, config_name)(**_llama_like(n_layers), **extra)
        return getattr(transformers, model_name)(config)

    return build


def _phi():
    from transformers import PhiConfig, PhiForCausalLM

    config = PhiConfig(
        hidden_size=D,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        partial_rotary_factor=0.5,
        max_position_embeddings=64,
        **_TOKENS,
    )
    return PhiForCausalLM(config)


def _phi3():
    from transformers import Phi3Config, Phi3ForCausalLM

    config = Phi3Config(
        hidden_size=D,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=64,
        original_max_position_embeddings=64,
        **_TOKENS,
    )
    return Phi3ForCausalLM(config)


_GEMMA2 = {"sliding_window": 4, "query_pre_attn_scalar": 8}
ARCHS: dict[str, Arch] = {
    "gpt2": Arch(_gpt2, 3, "transformer.h", "attn", "mlp", False),
    "gpt_neo": Arch(_gpt_neo, 2, "transformer.h", "attn", "mlp", False),
    "gpt_neox-parallel": Arch(
        functools.partial(_gpt_neox, True), 3, "gpt_neox.layers", "attention", "mlp", True
    ),
    "gpt_neox-sequential": Arch(
        functools.partial(_gpt_neox, False), 3, "gpt_neox.layers", "attention", "mlp", False
    ),
    "opt": Arch(_opt, 3, "model.decoder.layers", "self_attn", "fc2", False),
    "llama": Arch(
        _hf("LlamaConfig", "LlamaForCausalLM", 3), 3, "model.layers", "self_attn", "mlp", False
    ),
    "mistral": Arch(
        _hf("MistralConfig", "MistralForCausalLM", 2), 2, "model.layers", "self_attn", "mlp", False
    ),
    "qwen2": Arch(
        _hf("Qwen2Config", "Qwen2ForCausalLM", 3), 3, "model.layers", "self_attn", "mlp", False
    ),
    "qwen3": Arch(
        _hf("Qwen3Config", "Qwen3ForCausalLM", 2), 2, "model.layers", "self_attn", "mlp", False
    ),
    "gemma": Arch(
        _hf("GemmaConfig", "GemmaForCausalLM", 3), 3, "model.layers", "self_attn", "mlp", False
    ),
    "gemma2": Arch(
        _hf("Gemma2Config", "Gemma2ForCausalLM", 3, **_GEMMA2),
        3,
        "model.layers",
        "post_attention_layernorm",
        "post_feedforward_layernorm",
        False,
    ),
    "gemma3_text": Arch(
        _hf("Gemma3TextConfig", "Gemma3ForCausalLM", 3, **_GEMMA2),
        3,
        "model.layers",
        "post_attention_layernorm",
        "post_feedforward_layernorm",
        False,
    ),
    "phi": Arch(_phi, 2, "model.layers", "self_attn", "mlp", True),
    "phi3": Arch(_phi3, 3, "model.layers", "self_attn", "mlp", False),
}
ARCH_NAMES = list(ARCHS)
SEQUENTIAL = [name for name, arch in ARCHS.items() if not arch.parallel]
ARCH_SITES = [pytest.param(a, k, id=f"{a}-{k}") for a in ARCH_NAMES for k in SITE_KINDS]


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """These models are tiny: one intra-op thread is fastest, and immune to a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.cache
def model_for(name: str) -> nn.Module:
    """Each tiny model is built once (fixed seed, eval mode) and shared by the tests below."""
    torch.manual_seed(0)
    model = ARCHS[name].build().eval()
    # Let transformers install whatever output-recording hooks it keeps, before any baseline.
    with torch.no_grad():
        model(input_ids=_ids(), output_hidden_states=True, use_cache=False)
    return model


@functools.cache
def _ids_cached() -> Tensor:
    return torch.randint(3, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(1))


def _ids() -> Tensor:
    return _ids_cached().clone()


def _inputs() -> dict[str, Tensor]:
    return {"input_ids": _ids(), "attention_mask": torch.ones(BATCH, SEQ, dtype=torch.long)}


def _vector(seed: int = 2, d: int = D) -> Tensor:
    return torch.randn(d, generator=torch.Generator().manual_seed(seed))


# -- plain hooks, written here independently of the package ----------------------------------


def _first(value: Any) -> Tensor:
    return value[0] if isinstance(value, tuple | list) else value


def _block_input(args: tuple, kwargs: dict) -> Tensor:
    return args[0] if args else kwargs["hidden_states"]


@contextmanager
def captured(module: nn.Module, *, inputs: bool = False) -> Iterator[list[Tensor]]:
    """Record a module's first input (``inputs=True``) or its (first) output on each call."""
    got: list[Tensor] = []
    if inputs:
        handle = module.register_forward_pre_hook(
            lambda m, a, k: got.append(_block_input(a, k).detach().clone()), with_kwargs=True
        )
    else:
        handle = module.register_forward_hook(
            lambda m, a, out: got.append(_first(out).detach().clone())
        )
    try:
        yield got
    finally:
        handle.remove()


@contextmanager
def adding(module: nn.Module, v: Tensor, *, to_input: bool = False) -> Iterator[None]:
    """Add ``v`` to a module's hidden-state input or to its (first) output."""
    if to_input:

        def pre(m: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            if args:
                return (args[0] + v, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": kwargs["hidden_states"] + v}

        handle = module.register_forward_pre_hook(pre, with_kwargs=True)
    else:

        def post(m: nn.Module, args: tuple, out: Any) -> Any:
            if isinstance(out, tuple):
                return (out[0] + v, *out[1:])
            return out + v

        handle = module.register_forward_hook(post)
    try:
        yield
    finally:
        handle.remove()


def _blocks(name: str) -> nn.ModuleList:
    module: Any = model_for(name)
    for part in ARCHS[name].blocks.split("."):
        module = getattr(module, part)
    return module


def _sub(name: str, layer: int, which: str) -> nn.Module:
    arch = ARCHS[name]
    return getattr(_blocks(name)[layer], arch.attn if which == "attn" else arch.mlp)


def _hooks(model: nn.Module) -> dict[str, tuple[list[int], list[int]]]:
    return {
        n: (sorted(m._forward_hooks), sorted(m._forward_pre_hooks))
        for n, m in model.named_modules()
        if m._forward_hooks or m._forward_pre_hooks
    }


@torch.no_grad()
def _logits(model: nn.Module) -> Tensor:
    return model(**_inputs(), use_cache=False).logits


@torch.no_grad()
def _hidden_states(model: nn.Module) -> tuple[Tensor, ...]:
    return model(**_inputs(), output_hidden_states=True, use_cache=False).hidden_states


def _as_bsd(x: Tensor) -> Tensor:
    """Some blocks (OPT's MLP) run on ``[batch*seq, d]``; the stream is ``[batch, seq, d]``."""
    return x.reshape(BATCH, SEQ, x.shape[-1])


@torch.no_grad()
def _reference(name: str, layer: int) -> dict[str, Tensor]:
    """The five site tensors of ``layer`` from plain hooks on the HF modules."""
    model = model_for(name)
    block = _blocks(name)[layer]
    with (
        captured(block, inputs=True) as pre,
        captured(block) as post,
        captured(_sub(name, layer, "attn")) as attn,
        captured(_sub(name, layer, "mlp")) as mlp,
    ):
        model(**_inputs(), use_cache=False)
    ref = {
        "resid_pre": pre[0],
        "resid_post": post[0],
        "attn_out": _as_bsd(attn[0]),
        "mlp_out": _as_bsd(mlp[0]),
    }
    if not ARCHS[name].parallel:
        ref["resid_mid"] = ref["resid_pre"] + ref["attn_out"]
    return ref


# -- 1. layouts and names ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ARCH_NAMES)
def test_find_layout_finds_the_blocks(name: str) -> None:
    model, arch = model_for(name), ARCHS[name]
    layout = find_layout(model)
    assert layout.n_layers == arch.n_layers == len(layout.blocks)
    assert layout.blocks is _blocks(name)
    assert layout.blocks_path == arch.blocks
    assert layout.parallel == arch.parallel
    for layer in range(arch.n_layers):
        assert layout.sublayer(layer, layout.attn) is _sub(name, layer, "attn")
        assert layout.sublayer(layer, layout.mlp) is _sub(name, layer, "mlp")


@pytest.mark.parametrize("name", ARCH_NAMES)
def test_find_layout_on_the_bare_decoder(name: str) -> None:
    """The base model (no LM head) is found too: its blocks are the same ModuleList."""
    model = model_for(name)
    bare = model.base_model
    assert find_layout(bare).blocks is _blocks(name)


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
            run_to_site(model, layout, Site(0, kind), **_inputs())
        return
    hidden = _hidden_states(model)
    assert len(hidden) == arch.n_layers + 1
    baseline = _hooks(model)
    for layer in range(arch.n_layers):
        ref = _reference(name, layer)
        got = run_to_site(model, layout, Site(layer, kind), **_inputs())
        assert got.shape == (BATCH, SEQ, D), f"{kind} of layer {layer} has shape {got.shape}"
        torch.testing.assert_close(got, ref[kind], rtol=0, atol=0)
        # Independent of any hook: the hidden states transformers reports.
        if kind == "resid_pre":
            torch.testing.assert_close(got, hidden[layer], rtol=0, atol=0)
        if kind == "resid_post" and layer < arch.n_layers - 1:
            torch.testing.assert_close(got, hidden[layer + 1], rtol=0, atol=0)
        if kind == "resid_mid" and name == "gpt2":
            torch.testing.assert_close(got, ref["resid_post"] - ref["mlp_out"])
    assert _hooks(model) == baseline


def test_gpt2_sites_add_up() -> None:
    """GPT-2 across all sites at once: pre + attn = mid, mid + mlp = post."""
    model = model_for("gpt2")
    layout = find_layout(model)
    for layer in range(layout.n_layers):
        s = {k: run_to_site(model, layout, Site(layer, k), **_inputs()) for k in SITE_KINDS}
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
        run_to_site(model, layout, Site(0, "resid_post"), **_inputs())
        assert calls == ["block0"]
        calls.clear()
        run_to_site(model, layout, Site(layout.n_layers - 1, "resid_post"), **_inputs())
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
    v = _vector(seed=13)
    handles = hook_site(layout, Site(layer, "resid_post"), lambda x: x + v)
    try:
        with captured(layout.blocks[layer + 1], inputs=True) as next_input:
            hidden = _hidden_states(model)
    finally:
        for handle in handles:
            handle.remove()
    assert torch.equal(hidden[layer + 1], next_input[0])


# -- 3. edits through hook_site ---------------------------------------------------------------


def _plain_add(name: str, kind: str, layer: int, v: Tensor):
    """The hand-written hook that adds ``v`` at a site (resid_mid: to the attention output)."""
    block = _blocks(name)[layer]
    if kind == "resid_pre":
        return adding(block, v, to_input=True)
    if kind == "resid_post":
        return adding(block, v)
    return adding(_sub(name, layer, "mlp" if kind == "mlp_out" else "attn"), v)


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
    baseline = _hooks(model)
    base = _logits(model)

    # identity: bit-identical logits
    handles = hook_site(layout, site, lambda x: x.clone())
    try:
        same = _logits(model)
    finally:
        for handle in handles:
            handle.remove()
    assert torch.equal(same, base), f"identity edit at {site.hook_name} changed the logits"
    assert _hooks(model) == baseline

    # a fixed vector: changes the logits exactly as a hand-written hook does
    v = _vector()
    handles = hook_site(layout, site, lambda x: x + v)
    try:
        edited = _logits(model)
    finally:
        for handle in handles:
            handle.remove()
    assert not torch.allclose(edited, base, atol=1e-4)
    with _plain_add(name, kind, layer, v):
        manual = _logits(model)
    if kind == "resid_mid":  # (pre + attn + v) - pre vs attn + v: rounding only
        torch.testing.assert_close(edited, manual, rtol=1e-5, atol=1e-5)
    else:
        assert torch.equal(edited, manual)

    # removed: the model is back, with no hook of ours left anywhere
    assert torch.equal(_logits(model), base)
    assert _hooks(model) == baseline


# -- 4. resid_mid semantics -------------------------------------------------------------------


@pytest.mark.parametrize("name", SEQUENTIAL)
def test_resid_mid_edit_equals_adding_to_attention_output(name: str) -> None:
    """resid_mid = resid_pre + attn_out, so adding v to one adds it to the other, everywhere."""
    model = model_for(name)
    layout = find_layout(model)
    v = _vector(seed=5)
    for layer in range(layout.n_layers):
        handles = hook_site(layout, Site(layer, "resid_mid"), lambda x: x + v)
        try:
            with captured(_blocks(name)[layer]) as post:
                via_site = _logits(model)
        finally:
            for handle in handles:
                handle.remove()
        with captured(_blocks(name)[layer]) as manual_post, adding(_sub(name, layer, "attn"), v):
            manual = _logits(model)
        torch.testing.assert_close(post[0], manual_post[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(via_site, manual, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", SEQUENTIAL)
def test_resid_mid_edit_is_seen_by_the_mlp_and_the_stream(name: str) -> None:
    """A resid_mid edit replaces the stream there: resid_mid reads back as edit(resid_mid)."""
    model = model_for(name)
    layout = find_layout(model)
    layer = 0
    ref = _reference(name, layer)
    v = _vector(seed=6)
    handles = hook_site(layout, Site(layer, "resid_mid"), lambda x: 2.0 * x + v)
    try:
        with captured(_blocks(name)[layer]) as post, captured(_sub(name, layer, "mlp")) as mlp:
            model(**_inputs(), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    edited_mid = post[0] - _as_bsd(mlp[0])
    torch.testing.assert_close(edited_mid, 2.0 * ref["resid_mid"] + v, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["gpt2", "llama", "gemma2"])
def test_resid_pre_and_resid_mid_on_one_block_compose_in_stream_order(name: str) -> None:
    """Steering resid_pre and resid_mid of one block: resid_mid must read the stream as edited
    at resid_pre, whichever order the specs are listed in."""
    model = model_for(name)
    layer = 1
    block, attn = _blocks(name)[layer], _sub(name, layer, "attn")
    sae_pre = _tiny_sae(layer=layer, site="resid_pre", seed=11)
    sae_mid = _tiny_sae(layer=layer, site="resid_mid", seed=12)
    pre_spec = SteeringSpec(sae_pre, method="clamp", scores=_scores(), clamp_value=5.0)
    mid_spec = SteeringSpec(sae_mid, method="sae")
    baseline = _hooks(model)

    # By hand: x' = f_pre(x) enters the block; resid_mid becomes f_mid(x' + attn(x')).
    with SteeredModel(model, [pre_spec, mid_spec]) as steered:
        f_pre, f_mid = steered.interventions
        with steered.disabled():
            edited_input: list[Tensor] = []

            def pre(m: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
                x = f_pre(_block_input(args, kwargs))
                edited_input[:] = [x]
                if args:
                    return (x, *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": x}

            def mid(m: nn.Module, args: tuple, out: Any) -> Any:
                x = edited_input[0]
                new = f_mid(x + _first(out)) - x
                return (new, *out[1:]) if isinstance(out, tuple) else new

            handles = [
                block.register_forward_pre_hook(pre, with_kwargs=True),
                attn.register_forward_hook(mid),
            ]
            try:
                expected = _logits(model)
            finally:
                for handle in handles:
                    handle.remove()

    for specs, order in (([pre_spec, mid_spec], "pre, mid"), ([mid_spec, pre_spec], "mid, pre")):
        with SteeredModel(model, specs):
            got = _logits(model)
        diff = (got - expected).abs().max().item()
        assert diff < 1e-5, f"specs listed ({order}): logits off by {diff:.3g}"
    assert _hooks(model) == baseline


# -- 5. unsupported architectures and explicit overrides --------------------------------------


def _tiny_sae(
    d: int = D, n: int = 64, layer: int | None = None, site: str | None = None, seed: int = 3
):
    g = torch.Generator().manual_seed(seed)
    state = {
        "W_enc": torch.randn(d, n, generator=g) / d**0.5,
        "b_enc": torch.randn(n, generator=g) * 0.1,
        "W_dec": torch.randn(n, d, generator=g) / n**0.5,
        "b_dec": torch.randn(d, generator=g) * 0.1,
    }
    cfg = SAEConfig(d_in=d, d_sae=n, activation="topk", k=4, layer=layer, site=site)
    return build_sae(cfg, state)


def _scores(n: int = 64) -> Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(4))


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
    hidden = _hidden_states(model)
    for layer in range(2):
        got = run_to_site(model, layout, Site(layer, "resid_pre"), **_inputs())
        torch.testing.assert_close(got, hidden[layer], rtol=0, atol=0)
    x0 = run_to_site(model, layout, Site(0, "resid_post"), **_inputs())
    torch.testing.assert_close(x0, hidden[1], rtol=0, atol=0)

    baseline = _hooks(model)
    base = _logits(model)
    sae = _tiny_sae(layer=0, site="resid_post")
    steered = SteeredModel(
        model,
        sae,
        layer=0,
        method="clamp",
        scores=_scores(),
        clamp_value=20.0,
        blocks="transformer.h",
    )
    try:
        with captured(model.transformer.h[0]) as post:
            out = steered(**_inputs(), use_cache=False).logits
        assert not torch.allclose(out, base, atol=1e-4)
        # the block output is exactly the intervention applied to the unsteered one
        torch.testing.assert_close(post[0], steered.interventions[0](x0), rtol=1e-5, atol=1e-6)
        with steered.disabled():
            assert torch.equal(steered(**_inputs(), use_cache=False).logits, base)
    finally:
        steered.remove()
    assert torch.equal(_logits(model), base)
    assert _hooks(model) == baseline


def test_bad_overrides_are_clear_errors() -> None:
    model = _bloom()
    baseline = _hooks(model)
    for path in ("transformer.ln_f", "transformer.nope", "transformer", "lm_head.weight"):
        with pytest.raises(ValueError, match=r"blocks=.*nn\.ModuleList"):
            find_layout(model, blocks=path)
    layout = find_layout(model, blocks="transformer.h", attn="nope", mlp="mlp")
    with pytest.raises(ValueError, match="no submodule 'nope'.*attn="):
        hook_site(layout, Site(0, "attn_out"), lambda x: x)
    with pytest.raises(ValueError, match="no submodule 'nope'"):
        run_to_site(model, layout, Site(1, "attn_out"), **_inputs())
    with pytest.raises(ValueError, match=r"nn\.ModuleList"):
        SteeredModel(model, _tiny_sae(), layer=0, site="resid_post", blocks="transformer.ln_f")
    assert _hooks(model) == baseline  # nothing left behind by the failed calls


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
            run_to_site(model, layout, Site(bad, "resid_post"), **_inputs())
        with pytest.raises(ValueError, match=rf"0\.\.{n - 1}"):
            SteeredModel(model, _tiny_sae(), layer=bad, site="resid_post")
    for kind in ("resid_pre", "resid_post", "mlp_out"):
        last = run_to_site(model, layout, Site(-1, kind), **_inputs())
        torch.testing.assert_close(
            last, run_to_site(model, layout, Site(n - 1, kind), **_inputs()), rtol=0, atol=0
        )
    x = run_to_site(model, layout, Site(n - 1, "resid_post"), **_inputs())
    steered = SteeredModel(model, _tiny_sae(), layer=-1, site="resid_post", method="sae")
    try:
        assert steered.sites == [Site(n - 1, "resid_post")]
        with captured(layout.blocks[n - 1]) as post:
            steered(**_inputs(), use_cache=False)
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
    ids = _ids()
    with torch.no_grad():
        base = model(ids)
        with captured(model.layers[0]) as ref:
            model(ids)
    v = _vector(seed=7)
    seen: list[Any] = []
    handles = hook_site(layout, Site(0, "resid_post"), lambda x: x + v)
    # registered after ours, so it sees what the block hands on
    handles.append(model.layers[0].register_forward_hook(lambda m, a, out: seen.append(out)))
    try:
        with torch.no_grad():
            edited = model(ids)
    finally:
        for handle in handles:
            handle.remove()
    (out,) = seen
    assert type(out) is (list if as_list else tuple) and len(out) == 2 and out[1] is None
    assert torch.equal(out[0], ref[0] + v)
    assert not torch.allclose(edited, base)
    got = run_to_site(model, layout, Site(1, "resid_pre"), input_ids=ids)
    assert torch.equal(got, ref[0])
    with torch.no_grad():
        assert torch.equal(model(ids), base)

    # attn_out / mlp_out / resid_mid work through the same override
    layout = find_layout(model, blocks="layers", attn="attn", mlp="mlp")
    x_pre = run_to_site(model, layout, Site(0, "resid_pre"), input_ids=ids)
    x_attn = run_to_site(model, layout, Site(0, "attn_out"), input_ids=ids)
    x_mid = run_to_site(model, layout, Site(0, "resid_mid"), input_ids=ids)
    torch.testing.assert_close(x_mid, x_pre + x_attn, rtol=0, atol=0)

    steered = SteeredModel(
        model,
        _tiny_sae(),
        layer=0,
        site="resid_post",
        blocks="layers",
        method="clamp",
        scores=_scores(),
        clamp_value=20.0,
    )
    try:
        with torch.no_grad():
            assert not torch.allclose(steered(ids), base)
    finally:
        steered.remove()
    with torch.no_grad():
        assert torch.equal(model(ids), base)


# -- 8. accelerate device_map="auto" ----------------------------------------------------------


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**_llama_like(3)))
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
    baseline = _hooks(model)
    sae = _tiny_sae(layer=1, site="resid_post")
    with torch.no_grad():
        plain = model.generate(**_inputs(), **_generate_kwargs())
    steered = SteeredModel(model, sae, method="clamp", scores=_scores(), clamp_value=50.0)
    try:
        assert steered.sites == [Site(1, "resid_post")]
        out = steered.generate(**_inputs(), **_generate_kwargs())
        with steered.disabled():
            base = steered.generate(**_inputs(), **_generate_kwargs())
        assert torch.equal(base, plain)
        assert out.shape == plain.shape
        assert not torch.equal(out[:, SEQ:], plain[:, SEQ:])
    finally:
        steered.remove()
    assert _hooks(model) == baseline
    with torch.no_grad():
        assert torch.equal(model.generate(**_inputs(), **_generate_kwargs()), plain)


def test_accelerate_bfloat16_sae_follows_the_block(llama_dir) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        llama_dir, device_map="auto", dtype=torch.bfloat16
    ).eval()
    assert next(model.model.layers[1].parameters()).dtype == torch.bfloat16
    sae = _tiny_sae(layer=1, site="resid_post")
    steered = SteeredModel(model, sae, method="clamp", scores=_scores(), clamp_value=50.0)
    try:
        with torch.no_grad():
            logits = steered(**_inputs(), use_cache=False).logits
            with steered.disabled():
                base = steered(**_inputs(), use_cache=False).logits
        assert logits.dtype == torch.bfloat16
        assert not torch.equal(logits, base)
        step = steered.interventions[0]
        assert step.sae is sae
        assert step._sae.dtype == torch.bfloat16
        assert sae.dtype == torch.float32 and sae.W_dec.dtype == torch.float32
        out = steered.generate(**_inputs(), **_generate_kwargs())
        assert out.shape == (BATCH, SEQ + 6)
        assert step._sae.dtype == torch.bfloat16 and sae.dtype == torch.float32
    finally:
        steered.remove()


def test_accelerate_offloaded_blocks_are_steered_like_the_plain_model(llama_dir) -> None:
    """accelerate's hooks (weights kept on the meta device until each block runs) keep the
    steering exactly as on the plain model; the SAE is placed from the hidden state."""
    from accelerate import cpu_offload
    from transformers import AutoModelForCausalLM

    sae = _tiny_sae(layer=1, site="resid_post")
    kwargs = {"method": "clamp", "scores": _scores(), "clamp_value": 50.0}
    plain = AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    with SteeredModel(plain, sae, **kwargs) as steered:
        expected = steered.generate(**_inputs(), **_generate_kwargs())
    model = AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    cpu_offload(model, execution_device=torch.device("cpu"))
    assert all(p.device.type == "meta" for p in model.model.layers[1].parameters())
    with SteeredModel(model, sae, **kwargs) as steered:
        got = steered.generate(**_inputs(), **_generate_kwargs())
        with steered.disabled():
            base = steered.generate(**_inputs(), **_generate_kwargs())
        assert steered.interventions[0]._sae.dtype == torch.float32
    assert torch.equal(got, expected)
    assert not torch.equal(got[:, SEQ:], base[:, SEQ:])
