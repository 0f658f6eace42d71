"""SAELens's on-disk format: ``cfg.json`` <-> :class:`SAEConfig`, tensor names, the folder writer.

Reads configs of every SAELens generation: 6.x puts the model-side keys under ``metadata``,
older ones keep ``hook_name`` (or ``hook_point``), ``model_name`` and
``model_from_pretrained_kwargs`` at the top level and may express TopK as
``activation_fn: "topk"`` with ``activation_fn_kwargs.k``. This is also the library's native
SAE format (``SAE.save_pretrained``), so it needs no SAE class: only configs and state dicts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from hf_sae_steer import folders
from hf_sae_steer.sae.config import SAEConfig
from hf_sae_steer.sites.names import parse_hook_name

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
# SAELens architecture name <-> our activation name.
ARCH_TO_ACTIVATION = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu", "gated": "gated"}
ACTIVATION_TO_ARCH = {v: k for k, v in ARCH_TO_ACTIVATION.items()}
# Every tensor of a SAELens file that the library reads.
SAELENS_TENSORS = ("W_enc", "b_enc", "W_dec", "b_dec", "threshold", "log_threshold", "b_gate",
                   "r_mag", "b_mag", "scaling_factor", "finetuning_scaling_factor")  # fmt: skip


# -- config conversion -------------------------------------------------------------------
def _meta(cfg: dict[str, Any], key: str, default: Any = None) -> Any:
    """A model-side key from ``metadata`` (SAELens 6) or the top level (older)."""
    meta = cfg.get("metadata")
    if isinstance(meta, dict) and meta.get(key) is not None:
        return meta[key]
    return cfg.get(key, default)


def _architecture(cfg: dict[str, Any]) -> str:
    arch = cfg.get("architecture") or "standard"
    act_fn = cfg.get("activation_fn", cfg.get("activation_fn_str", "relu")) or "relu"
    if arch == "standard" and act_fn == "topk":  # pre-6 TopK
        arch = "topk"
    elif arch == "standard" and act_fn != "relu":
        raise ValueError(f"Unsupported SAELens activation_fn {act_fn!r}; only relu and topk.")
    if arch not in ARCH_TO_ACTIVATION:
        raise ValueError(
            f"Unsupported SAELens architecture {arch!r}; use one of "
            f"{', '.join(ARCH_TO_ACTIVATION)}."
        )
    return ARCH_TO_ACTIVATION[arch]


def _normalize(cfg: dict[str, Any], notes: list[str]) -> str:
    norm = cfg.get("normalize_activations")
    if norm in (None, False, "none"):
        return "none"
    if norm is True or norm == "expected_average_only_in":
        # SAELens applies no run-time normalisation for this mode: the dataset-wide factor is
        # folded into the weights at the end of training (or by the release registry).
        notes.append("normalize_activations=expected_average_only_in read as none, like SAELens")
        return "none"
    if norm in ("layer_norm", "constant_norm_rescale"):
        return str(norm)
    raise ValueError(
        f"Unsupported SAELens normalize_activations {norm!r}; use none, layer_norm, "
        "constant_norm_rescale (or expected_average_only_in)."
    )


def saelens_config(cfg: dict[str, Any]) -> SAEConfig:
    """Our :class:`SAEConfig` from a SAELens ``cfg.json`` dict of any generation."""
    if "d_in" not in cfg or "d_sae" not in cfg:
        raise ValueError("SAELens config lacks d_in or d_sae.")
    for name in ("d_in", "d_sae"):
        value = cfg[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(
                f"{CFG_FILENAME} field {name} must be a positive integer, got {value!r}."
            )
    activation = _architecture(cfg)
    k = cfg.get("k")
    kwargs = cfg.get("activation_fn_kwargs") or {}
    if k is None and isinstance(kwargs, dict):
        k = kwargs.get("k")
    if activation == "topk" and not (isinstance(k, int) and not isinstance(k, bool)):
        raise ValueError(f"A SAELens topk SAE needs an integer k, got {k!r}.")
    notes: list[str] = []
    hook = _meta(cfg, "hook_name") or _meta(cfg, "hook_point")
    layer, site = parse_hook_name(hook)
    if layer is None and isinstance(cfg.get("hook_layer"), int):
        layer = cfg["hook_layer"]
    if _meta(cfg, "hook_head_index") is not None:
        site = None  # a single attention head is not a whole site
    model_kwargs = _meta(cfg, "model_from_pretrained_kwargs") or {}
    extra: dict[str, Any] = {"format": "saelens"}
    if hook and site is None:
        extra["hook_name"] = hook  # off-site: keep what it was trained on
    for key in ("dtype", "reshape_activations"):
        if cfg.get(key) is not None:
            extra[key] = cfg[key]
    out = SAEConfig(
        d_in=cfg["d_in"],
        d_sae=cfg["d_sae"],
        activation=activation,  # type: ignore[arg-type]
        k=k if activation == "topk" else None,
        normalize_activations=_normalize(cfg, notes),  # type: ignore[arg-type]
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
        center_input=bool(model_kwargs.get("center_writing_weights", False)),
        layer=layer,
        site=site,
        model_name=_meta(cfg, "model_name"),
        extra=extra,
    )
    if notes:
        out.extra["notes"] = notes
    return out


def saelens_names(sae_cfg: SAEConfig, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A SAELens state dict under our tensor names (``b_gate`` -> ``b_enc``, ``log_threshold`` ->
    ``threshold``, still its log), unconverted and unfolded: what to check before any work."""
    state = dict(state)
    if sae_cfg.activation == "gated" and "b_enc" not in state and "b_gate" in state:
        state["b_enc"] = state.pop("b_gate")
    if sae_cfg.activation == "jumprelu" and "threshold" not in state and "log_threshold" in state:
        state["threshold"] = state.pop("log_threshold")
    return state


def saelens_state(cfg: dict[str, Any], sae_cfg: SAEConfig, state: dict[str, Tensor]) -> dict:
    """Map a SAELens state dict onto ours, folding the run-time-only options into weights.

    Check ``saelens_names(sae_cfg, state)`` first: folding computes on the tensors."""
    log_scale = "threshold" not in state and "log_threshold" in state
    state = {k: v.to(torch.float32) for k, v in saelens_names(sae_cfg, state).items()}
    if log_scale and "threshold" in state:
        state["threshold"] = torch.exp(state["threshold"])
    scale = state.pop("scaling_factor", state.pop("finetuning_scaling_factor", None))
    if scale is not None and scale.numel() not in (1, sae_cfg.d_sae):
        raise ValueError(f"SAE tensor scaling_factor has {scale.numel()} values, not d_sae.")
    if scale is not None and not torch.all(scale == 1) and "W_dec" in state:
        if cfg.get("finetuning_scaling_factor"):
            # Old SAELens decoded ``(z * scaling_factor) @ W_dec``: fold it into the decoder.
            state["W_dec"] = state["W_dec"] * scale.reshape(-1, 1)
            sae_cfg.extra["folded"] = "scaling_factor"
        else:  # old SAELens ignored the tensor unless the flag was set
            sae_cfg.extra["ignored"] = "scaling_factor (finetuning_scaling_factor is false)"
    if cfg.get("rescale_acts_by_decoder_norm") and {"W_enc", "b_enc", "W_dec"} <= set(state):
        # TopK with this flag scales pre-activations by ||W_dec|| and divides it out on decode.
        norms = state["W_dec"].norm(dim=-1)
        state["W_enc"] = state["W_enc"] * norms
        state["b_enc"] = state["b_enc"] * norms
        state["W_dec"] = state["W_dec"] / norms.reshape(-1, 1)
        sae_cfg.extra["folded"] = "rescale_acts_by_decoder_norm"
    return state


# -- writing -------------------------------------------------------------------------------
def saelens_cfg_dict(c: SAEConfig, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """A SAELens ``cfg.json`` for config ``c``; readable by SAELens 6 and older readers alike."""
    metadata: dict[str, Any] = {"hook_name": c.hook_name, "model_name": c.model_name}
    if c.center_input:
        metadata["model_from_pretrained_kwargs"] = {"center_writing_weights": True}
    cfg: dict[str, Any] = {
        "architecture": ACTIVATION_TO_ARCH[c.activation],
        "d_in": c.d_in,
        "d_sae": c.d_sae,
        "dtype": str(dtype).removeprefix("torch."),
        "device": "cpu",
        "apply_b_dec_to_input": c.apply_b_dec_to_input,
        "normalize_activations": c.normalize_activations,
        "reshape_activations": "none",
        "metadata": metadata,
    }
    if c.activation == "topk":
        cfg["k"] = c.k
    # Pre-6 readers take these from the top level; 6.x readers ignore them there.
    cfg.update({k: v for k, v in metadata.items() if v is not None})
    if c.layer is not None:
        cfg["hook_layer"] = c.layer
    return cfg


def write_folder(
    cfg: SAEConfig,
    state: dict[str, Tensor],
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
) -> Path:
    """Write a SAELens folder (``cfg.json`` + ``sae_weights.safetensors``) from a config and a
    state dict in our tensor names, atomically; a non-empty folder needs ``overwrite``."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    dtype = tensors["W_enc"].dtype if "W_enc" in tensors else torch.float32
    if cfg.activation == "gated":
        tensors["b_gate"] = tensors.pop("b_enc")  # SAELens's name for the gate bias

    def write(folder: Path) -> None:
        save_file(tensors, str(folder / WEIGHTS_FILENAME))
        text = json.dumps(saelens_cfg_dict(cfg, dtype), indent=2)
        (folder / CFG_FILENAME).write_text(text + "\n", encoding="utf-8")

    return folders.write_folder(path, (CFG_FILENAME, WEIGHTS_FILENAME), write, overwrite=overwrite)
