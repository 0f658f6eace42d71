"""Tiny models of every supported architecture and plain hooks written independently of
``hf_sae_steer.sites`` (shared by test_sites.py and test_sites_overrides.py)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import pytest
import torch
from torch import Tensor, nn

from hf_sae_steer.sae import SAEConfig, build_sae

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


def llama_like(n_layers: int) -> dict[str, Any]:
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


def gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(
        GPT2Config(n_layer=3, n_embd=D, n_head=4, n_inner=64, n_positions=64, **_TOKENS)
    )


def gpt_neo():
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


def gpt_neox(parallel: bool):
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


def opt():
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


def hf(config_name: str, model_name: str, n_layers: int, **extra: Any):
    def build():
        import transformers

        config = getattr(transformers, config_name)(**llama_like(n_layers), **extra)
        return getattr(transformers, model_name)(config)

    return build


def phi():
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


def phi3():
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
    "gpt2": Arch(gpt2, 3, "transformer.h", "attn", "mlp", False),
    "gpt_neo": Arch(gpt_neo, 2, "transformer.h", "attn", "mlp", False),
    "gpt_neox-parallel": Arch(
        functools.partial(gpt_neox, True), 3, "gpt_neox.layers", "attention", "mlp", True
    ),
    "gpt_neox-sequential": Arch(
        functools.partial(gpt_neox, False), 3, "gpt_neox.layers", "attention", "mlp", False
    ),
    "opt": Arch(opt, 3, "model.decoder.layers", "self_attn", "fc2", False),
    "llama": Arch(
        hf("LlamaConfig", "LlamaForCausalLM", 3), 3, "model.layers", "self_attn", "mlp", False
    ),
    "mistral": Arch(
        hf("MistralConfig", "MistralForCausalLM", 2), 2, "model.layers", "self_attn", "mlp", False
    ),
    "qwen2": Arch(
        hf("Qwen2Config", "Qwen2ForCausalLM", 3), 3, "model.layers", "self_attn", "mlp", False
    ),
    "qwen3": Arch(
        hf("Qwen3Config", "Qwen3ForCausalLM", 2), 2, "model.layers", "self_attn", "mlp", False
    ),
    "gemma": Arch(
        hf("GemmaConfig", "GemmaForCausalLM", 3), 3, "model.layers", "self_attn", "mlp", False
    ),
    "gemma2": Arch(
        hf("Gemma2Config", "Gemma2ForCausalLM", 3, **_GEMMA2),
        3,
        "model.layers",
        "post_attention_layernorm",
        "post_feedforward_layernorm",
        False,
    ),
    "gemma3_text": Arch(
        hf("Gemma3TextConfig", "Gemma3ForCausalLM", 3, **_GEMMA2),
        3,
        "model.layers",
        "post_attention_layernorm",
        "post_feedforward_layernorm",
        False,
    ),
    "phi": Arch(phi, 2, "model.layers", "self_attn", "mlp", True),
    "phi3": Arch(phi3, 3, "model.layers", "self_attn", "mlp", False),
}
ARCH_NAMES = list(ARCHS)
SEQUENTIAL = [name for name, arch in ARCHS.items() if not arch.parallel]
ARCH_SITES = [pytest.param(a, k, id=f"{a}-{k}") for a in ARCH_NAMES for k in SITE_KINDS]


@functools.cache
def model_for(name: str) -> nn.Module:
    """Each tiny model is built once (fixed seed, eval mode) and shared by the tests below."""
    torch.manual_seed(0)
    model = ARCHS[name].build().eval()
    # Let transformers install whatever output-recording hooks it keeps, before any baseline.
    with torch.no_grad():
        model(input_ids=ids(), output_hidden_states=True, use_cache=False)
    return model


@functools.cache
def ids_cached() -> Tensor:
    return torch.randint(3, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(1))


def ids() -> Tensor:
    return ids_cached().clone()


def inputs() -> dict[str, Tensor]:
    return {"input_ids": ids(), "attention_mask": torch.ones(BATCH, SEQ, dtype=torch.long)}


def vector(seed: int = 2, d: int = D) -> Tensor:
    return torch.randn(d, generator=torch.Generator().manual_seed(seed))


# -- plain hooks, written here independently of the package ----------------------------------


def first(value: Any) -> Tensor:
    return value[0] if isinstance(value, tuple | list) else value


def block_input(args: tuple, kwargs: dict) -> Tensor:
    return args[0] if args else kwargs["hidden_states"]


@contextmanager
def captured(module: nn.Module, *, inputs: bool = False) -> Iterator[list[Tensor]]:
    """Record a module's first input (``inputs=True``) or its (first) output on each call."""
    got: list[Tensor] = []
    if inputs:
        handle = module.register_forward_pre_hook(
            lambda m, a, k: got.append(block_input(a, k).detach().clone()), with_kwargs=True
        )
    else:
        handle = module.register_forward_hook(
            lambda m, a, out: got.append(first(out).detach().clone())
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


def blocks(name: str) -> nn.ModuleList:
    module: Any = model_for(name)
    for part in ARCHS[name].blocks.split("."):
        module = getattr(module, part)
    return module


def sub(name: str, layer: int, which: str) -> nn.Module:
    arch = ARCHS[name]
    return getattr(blocks(name)[layer], arch.attn if which == "attn" else arch.mlp)


def hooks(model: nn.Module) -> dict[str, tuple[list[int], list[int]]]:
    return {
        n: (sorted(m._forward_hooks), sorted(m._forward_pre_hooks))
        for n, m in model.named_modules()
        if m._forward_hooks or m._forward_pre_hooks
    }


@torch.no_grad()
def logits(model: nn.Module) -> Tensor:
    return model(**inputs(), use_cache=False).logits


@torch.no_grad()
def hidden_states(model: nn.Module) -> tuple[Tensor, ...]:
    return model(**inputs(), output_hidden_states=True, use_cache=False).hidden_states


def as_bsd(x: Tensor) -> Tensor:
    """Some blocks (OPT's MLP) run on ``[batch*seq, d]``; the stream is ``[batch, seq, d]``."""
    return x.reshape(BATCH, SEQ, x.shape[-1])


@torch.no_grad()
def reference(name: str, layer: int) -> dict[str, Tensor]:
    """The five site tensors of ``layer`` from plain hooks on the HF modules."""
    model = model_for(name)
    block = blocks(name)[layer]
    with (
        captured(block, inputs=True) as pre,
        captured(block) as post,
        captured(sub(name, layer, "attn")) as attn,
        captured(sub(name, layer, "mlp")) as mlp,
    ):
        model(**inputs(), use_cache=False)
    ref = {
        "resid_pre": pre[0],
        "resid_post": post[0],
        "attn_out": as_bsd(attn[0]),
        "mlp_out": as_bsd(mlp[0]),
    }
    if not ARCHS[name].parallel:
        ref["resid_mid"] = ref["resid_pre"] + ref["attn_out"]
    return ref


def tiny_sae(
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


def random_scores(n: int = 64) -> Tensor:
    return torch.rand(n, generator=torch.Generator().manual_seed(4))  # in [0, 1], as scores are
