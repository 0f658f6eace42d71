"""Where the decoder blocks are: the block list of Hugging Face causal LMs and the sublayers in
each block whose outputs are added to the residual stream."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

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
