"""SAELens folders: ``cfg.json`` + ``sae_weights.safetensors``, read and written.

Reads configs of every SAELens generation: 6.x puts the model-side keys under ``metadata``,
older ones keep ``hook_name`` (or ``hook_point``), ``model_name`` and
``model_from_pretrained_kwargs`` at the top level and may express TopK as
``activation_fn: "topk"`` with ``activation_fn_kwargs.k``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from hf_sae_steer.sae.base import SAE, SAEConfig, build_sae

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
# SAELens architecture name <-> our activation name.
ARCH_TO_ACTIVATION = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu", "gated": "gated"}
ACTIVATION_TO_ARCH = {v: k for k, v in ARCH_TO_ACTIVATION.items()}
SITE_HOOKS = {
    "resid_pre": "hook_resid_pre",
    "resid_mid": "hook_resid_mid",
    "resid_post": "hook_resid_post",
    "attn_out": "hook_attn_out",
    "mlp_out": "hook_mlp_out",
}
_HOOK_SITES = {v: k for k, v in SITE_HOOKS.items()}
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")


# -- small readers shared with the other formats -------------------------------------------
def read_safetensors(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """All tensors of a safetensors file on CPU; a clear error when it is missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SAE weights not found: {path}")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"SAE weights file {path} is corrupt or not safetensors: {e}") from e


def read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SAE config not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"SAE config {path} is corrupt (not valid JSON): {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"SAE config {path} is corrupt: expected a JSON object.")
    return data


def parse_hook_name(hook_name: str | None) -> tuple[int | None, str | None]:
    """``blocks.8.hook_resid_pre`` -> ``(8, "resid_pre")``; unknown hooks keep the layer only."""
    m = _BLOCK_RE.match(hook_name or "")
    if not m:
        return None, None
    return int(m[1]), _HOOK_SITES.get(m[2])


def hook_name_for(layer: int | None, site: str | None) -> str | None:
    """The TransformerLens hook name of ``site`` at ``layer``, when both are known."""
    if layer is None or site not in SITE_HOOKS:
        return None
    return f"blocks.{layer}.{SITE_HOOKS[site]}"


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
    activation = _architecture(cfg)
    k = cfg.get("k")
    kwargs = cfg.get("activation_fn_kwargs") or {}
    if k is None and isinstance(kwargs, dict):
        k = kwargs.get("k")
    if activation == "topk" and not (isinstance(k, int) and not isinstance(k, bool)):
        raise ValueError(f"A SAELens topk SAE needs an integer k, got {k!r}.")
    notes: list[str] = []
    hook_name = _meta(cfg, "hook_name") or _meta(cfg, "hook_point")
    layer, site = parse_hook_name(hook_name)
    if layer is None and isinstance(cfg.get("hook_layer"), int):
        layer = cfg["hook_layer"]
    if _meta(cfg, "hook_head_index") is not None:
        site = None  # a single attention head is not a whole site
    model_kwargs = _meta(cfg, "model_from_pretrained_kwargs") or {}
    extra: dict[str, Any] = {"format": "saelens"}
    for key in ("dtype", "reshape_activations"):
        if cfg.get(key) is not None:
            extra[key] = cfg[key]
    out = SAEConfig(
        d_in=int(cfg["d_in"]),
        d_sae=int(cfg["d_sae"]),
        activation=activation,  # type: ignore[arg-type]
        k=k if activation == "topk" else None,
        normalize_activations=_normalize(cfg, notes),  # type: ignore[arg-type]
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
        center_input=bool(model_kwargs.get("center_writing_weights", False)),
        layer=layer,
        site=site,
        hook_name=hook_name,
        model_name=_meta(cfg, "model_name"),
        extra=extra,
    )
    if notes:
        out.extra["notes"] = notes
    return out


def saelens_state(cfg: dict[str, Any], sae_cfg: SAEConfig, state: dict[str, Tensor]) -> dict:
    """Map a SAELens state dict onto ours, folding the run-time-only options into weights."""
    state = {k: v.to(torch.float32) for k, v in state.items()}
    if sae_cfg.activation == "gated" and "b_enc" not in state and "b_gate" in state:
        state["b_enc"] = state.pop("b_gate")
    if sae_cfg.activation == "jumprelu" and "threshold" not in state and "log_threshold" in state:
        state["threshold"] = torch.exp(state.pop("log_threshold"))
    scale = state.pop("scaling_factor", state.pop("finetuning_scaling_factor", None))
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


def sae_from_saelens(cfg: dict[str, Any], state: dict[str, Tensor], source: str = "") -> SAE:
    """Build an :class:`SAE` from a SAELens config dict and state dict."""
    prefix = f"{source}: " if source else ""
    try:
        sae_cfg = saelens_config(cfg)
        return build_sae(sae_cfg, saelens_state(cfg, sae_cfg, state))
    except ValueError as e:
        raise ValueError(f"{prefix}{e}") from None


def load_saelens(path: str | os.PathLike[str]) -> SAE:
    """Load a SAELens folder holding ``cfg.json`` and ``sae_weights.safetensors``."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"SAELens folder not found: {folder}")
    cfg = read_json(folder / CFG_FILENAME)
    state = read_safetensors(folder / WEIGHTS_FILENAME)
    return sae_from_saelens(cfg, state, source=str(folder))


# -- writing -------------------------------------------------------------------------------
def saelens_cfg_dict(sae: SAE) -> dict[str, Any]:
    """A SAELens ``cfg.json`` for ``sae``; readable by SAELens 6 and older readers alike."""
    c = sae.cfg
    hook_name = hook_name_for(c.layer, c.site) or c.hook_name
    metadata: dict[str, Any] = {"hook_name": hook_name, "model_name": c.model_name}
    if c.center_input:
        metadata["model_from_pretrained_kwargs"] = {"center_writing_weights": True}
    cfg: dict[str, Any] = {
        "architecture": ACTIVATION_TO_ARCH[c.activation],
        "d_in": c.d_in,
        "d_sae": c.d_sae,
        "dtype": str(sae.dtype).removeprefix("torch."),
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


def save_saelens(sae: SAE, path: str | os.PathLike[str]) -> Path:
    """Write ``sae`` as a SAELens folder (``cfg.json`` + ``sae_weights.safetensors``)."""
    folder = Path(path).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in sae.state_dict().items()}
    if sae.cfg.activation == "gated":
        state["b_gate"] = state.pop("b_enc")  # SAELens's name for the gate bias
    save_file(state, str(folder / WEIGHTS_FILENAME))
    text = json.dumps(saelens_cfg_dict(sae), indent=2)
    (folder / CFG_FILENAME).write_text(text + "\n", encoding="utf-8")
    return folder
