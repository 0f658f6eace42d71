"""Where hooks go: decoder blocks of Hugging Face causal LMs and the five hook sites in them.

A site is a hidden state ``[batch, seq, d_model]`` inside block ``layer``:

=============  ======================================  ==================================
site           what it is                              TransformerLens hook
=============  ======================================  ==================================
resid_pre      block input                             ``blocks.L.hook_resid_pre``
resid_mid      after attention, before the MLP         ``blocks.L.hook_resid_mid``
resid_post     block output                            ``blocks.L.hook_resid_post``
attn_out       attention output added to the stream    ``blocks.L.hook_attn_out``
mlp_out        MLP output added to the stream          ``blocks.L.hook_mlp_out``
=============  ======================================  ==================================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from hf_sae_steer.sae.base import SITES

Edit = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Site:
    """A hook point: ``kind`` (one of :data:`SITES`) in block ``layer``."""

    layer: int
    kind: str

    def __post_init__(self) -> None:
        if self.kind not in SITES:
            raise ValueError(f"Unknown site {self.kind!r}; use one of {', '.join(SITES)}.")

    @property
    def hook_name(self) -> str:
        """The TransformerLens name of this site, as SAELens configs spell it."""
        return f"blocks.{self.layer}.hook_{self.kind}"


# model_type -> (blocks path, module added to the stream after attention, same for the MLP).
# Gemma 2/3 normalise sublayer outputs before the residual add, so their post-norms are the
# modules whose outputs are the stream's attn_out / mlp_out.
_LAYOUTS: dict[str, tuple[str, str, str]] = {
    "gpt2": ("transformer.h", "attn", "mlp"),
    "gpt_neo": ("transformer.h", "attn", "mlp"),
    "gptj": ("transformer.h", "attn", "mlp"),
    "gpt_neox": ("gpt_neox.layers", "attention", "mlp"),
    "opt": ("model.decoder.layers", "self_attn", "fc2"),
    "llama": ("model.layers", "self_attn", "mlp"),
    "mistral": ("model.layers", "self_attn", "mlp"),
    "qwen2": ("model.layers", "self_attn", "mlp"),
    "qwen3": ("model.layers", "self_attn", "mlp"),
    "gemma": ("model.layers", "self_attn", "mlp"),
    "gemma2": ("model.layers", "post_attention_layernorm", "post_feedforward_layernorm"),
    "gemma3_text": ("model.layers", "post_attention_layernorm", "post_feedforward_layernorm"),
    "gemma3": (
        "model.language_model.layers",
        "post_attention_layernorm",
        "post_feedforward_layernorm",
    ),
    "phi": ("model.layers", "self_attn", "mlp"),
    "phi3": ("model.layers", "self_attn", "mlp"),
}
SUPPORTED_MODEL_TYPES = tuple(sorted(_LAYOUTS))


@dataclass
class ModelLayout:
    """The decoder blocks of a model and the sublayer modules that write to the stream."""

    blocks: nn.ModuleList
    blocks_path: str
    attn: str
    mlp: str
    parallel: bool
    decoder: nn.Module
    post_ln: bool = False

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    def check_layer(self, layer: int) -> None:
        if not isinstance(layer, int) or not -self.n_layers <= layer < self.n_layers:
            raise ValueError(
                f"Layer {layer!r} is out of range: this model has {self.n_layers} blocks "
                f"(layers 0..{self.n_layers - 1})."
            )

    def sublayer(self, layer: int, name: str) -> nn.Module:
        module = _get_path(self.blocks[layer], name)
        if module is None:
            raise ValueError(
                f"Block {layer} ({type(self.blocks[layer]).__name__}) has no submodule {name!r}; "
                "pass attn=/mlp= naming the modules whose outputs are added to the residual stream."
            )
        return module


def _get_path(root: nn.Module, path: str) -> Any:
    obj: Any = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _parent(model: nn.Module, path: str) -> nn.Module:
    head, _, _ = path.rpartition(".")
    return _get_path(model, head) if head else model


def find_layout(
    model: nn.Module,
    blocks: str | None = None,
    attn: str | None = None,
    mlp: str | None = None,
    parallel: bool | None = None,
) -> ModelLayout:
    """Locate the decoder blocks of ``model``; the keyword arguments override the table.

    ``blocks`` is a dotted path to the ``nn.ModuleList`` of decoder blocks (e.g.
    ``"model.layers"``); ``attn``/``mlp`` name, inside a block, the modules whose outputs are
    added to the residual stream; ``parallel=True`` declares parallel attention/MLP blocks.
    """
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    known = _LAYOUTS.get(model_type or "")
    if blocks is None and known is not None:
        blocks = known[0]
        if _get_path(model, blocks) is None:
            # The bare decoder (GPT2Model, LlamaModel, ...) rather than the *ForCausalLM.
            _, _, inner = blocks.partition(".")
            if inner and _get_path(model, inner) is not None:
                blocks = inner
    if blocks is None:
        raise ValueError(
            f"Unsupported architecture {type(model).__name__} (model_type={model_type!r}); "
            f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}. Pass blocks='path.to.layers' (and "
            "attn=/mlp= for attn_out, mlp_out and resid_mid), e.g. "
            "SteeredModel(model, sae, layer=0, blocks='model.layers', attn='self_attn', mlp='mlp')."
        )
    module_list = _get_path(model, blocks)
    if not isinstance(module_list, nn.ModuleList) or len(module_list) == 0:
        raise ValueError(
            f"blocks={blocks!r} does not name a non-empty nn.ModuleList of decoder blocks in "
            f"{type(model).__name__}."
        )
    parallel = (
        parallel
        if parallel is not None
        else bool(
            model_type in ("phi", "gptj")
            or (model_type == "gpt_neox" and getattr(config, "use_parallel_residual", False))
        )
    )
    # Post-LN OPT normalises the stream between attention and MLP: no clean resid_mid there.
    post_ln = model_type == "opt" and not getattr(config, "do_layer_norm_before", True)
    return ModelLayout(
        blocks=module_list,
        blocks_path=blocks,
        attn=attn or (known[1] if known else "self_attn"),
        mlp=mlp or (known[2] if known else "mlp"),
        parallel=parallel,
        decoder=_parent(model, blocks),
        post_ln=post_ln,
    )


def _first(value: Any) -> Tensor:
    return value[0] if isinstance(value, tuple | list) else value


def _replace_first(value: Any, new: Tensor) -> Any:
    if isinstance(value, tuple):
        return (new, *value[1:])
    if isinstance(value, list):
        return [new, *value[1:]]
    return new


def _input_hidden(args: tuple, kwargs: dict) -> Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_input_hidden(args: tuple, kwargs: dict, new: Tensor) -> tuple[tuple, dict]:
    if args:
        return (new, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": new}


def hook_site(layout: ModelLayout, site: Site, edit: Edit) -> list[RemovableHandle]:
    """Register hooks so that ``site``'s hidden state ``x`` becomes ``edit(x)``.

    Returns the handles; removing them all restores the model. Whatever container the block
    returns (a tensor in transformers 5, a tuple before) is returned in kind. A ``resid_mid``
    hook reads the block input as earlier pre-hooks left it: hook ``resid_pre`` first.
    """
    layout.check_layer(site.layer)
    block = layout.blocks[site.layer]
    kind = site.kind

    if kind == "resid_pre":

        def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            return _with_input_hidden(args, kwargs, edit(_input_hidden(args, kwargs)))

        return [block.register_forward_pre_hook(pre_hook, with_kwargs=True)]

    if kind == "resid_post":

        def post_hook(module: nn.Module, args: tuple, output: Any) -> Any:
            return _replace_first(output, edit(_first(output)))

        # First in line, so transformers' output_hidden_states recorders see the steered state.
        return [block.register_forward_hook(post_hook, prepend=True)]

    if kind in ("attn_out", "mlp_out"):
        target = layout.sublayer(site.layer, _sublayer(layout, kind))
        # Some sublayers run on [batch*seq, d] (OPT's fc2); edits always see [batch, seq, d].
        lead: list[torch.Size] = []

        def note_shape(module: nn.Module, args: tuple, kwargs: dict) -> None:
            lead[:] = [_input_hidden(args, kwargs).shape[:-1]]

        def out_hook(module: nn.Module, args: tuple, output: Any) -> Any:
            x = _first(output)
            shape = lead[0] if lead else x.shape[:-1]
            if x.shape[:-1] != shape and x.shape[:-1].numel() == shape.numel():
                return _replace_first(output, edit(x.reshape(*shape, x.shape[-1])).reshape(x.shape))
            return _replace_first(output, edit(x))

        return [
            block.register_forward_pre_hook(note_shape, with_kwargs=True),
            target.register_forward_hook(out_hook),
        ]

    # resid_mid = block input + attention output. Editing it means editing what attention
    # adds: attn' = edit(resid_pre + attn) - resid_pre, which both the MLP and the stream see.
    if layout.parallel or layout.post_ln:
        why = (
            "attention and MLP read the same input in parallel"
            if layout.parallel
            else "post-LN blocks normalise the stream between attention and MLP"
        )
        raise ValueError(
            f"resid_mid does not exist in {type(block).__name__}: {why}. "
            "Use resid_pre, resid_post, attn_out or mlp_out."
        )
    attn = layout.sublayer(site.layer, layout.attn)
    stash: list[Tensor] = []

    def stash_input(module: nn.Module, args: tuple, kwargs: dict) -> None:
        stash[:] = [_input_hidden(args, kwargs)]

    def mid_hook(module: nn.Module, args: tuple, output: Any) -> Any:
        added = _first(output)
        mid = stash.pop() + added
        return _replace_first(output, added + (edit(mid) - mid))

    return [
        block.register_forward_pre_hook(stash_input, with_kwargs=True),
        attn.register_forward_hook(mid_hook),
    ]


def _sublayer(layout: ModelLayout, kind: str) -> str:
    return layout.attn if kind == "attn_out" else layout.mlp


class StopForward(Exception):
    """Raised by a capture hook to end a forward pass once the site has been read."""


@torch.no_grad()
def run_to_site(model: nn.Module, layout: ModelLayout, site: Site, **inputs: Any) -> Tensor:
    """Run ``model(**inputs)`` only as far as ``site`` and return its hidden state.

    Later blocks and the LM head never run, which is what makes scoring cheap.
    """
    captured: list[Tensor] = []

    def capture(x: Tensor) -> Tensor:
        captured.append(x)
        raise StopForward

    handles = hook_site(layout, site, capture)
    try:
        model(**inputs, use_cache=False)
    except StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    if not captured:
        raise RuntimeError(f"The forward pass never reached {site.hook_name}.")
    return captured[0]
