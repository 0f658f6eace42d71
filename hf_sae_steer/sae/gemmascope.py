"""Gemma Scope JumpReLU SAEs: ``params.npz`` / ``params.safetensors``.

Tensors: ``w_enc [d_in, d_sae]``, ``w_dec [d_sae, d_in]``, ``b_enc``, ``b_dec``, ``threshold``.
Gemma Scope encodes ``x @ w_enc + b_enc`` without subtracting ``b_dec`` and uses no input
normalisation. The published layout, ``<repo>/layer_20/width_16k/average_l0_71/params.npz`` in
repos named ``gemma-scope-2b-pt-res`` (``-mlp``, ``-att``), tells the layer and the site.
"""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hf_sae_steer.sae.base import SAE, build_sae, check_weights
from hf_sae_steer.sae.config import SAEConfig
from hf_sae_steer.sae.files import read_safetensors

PARAM_FILES = ("params.safetensors", "params.npz")
_KEYS = {"w_enc": "W_enc", "w_dec": "W_dec", "b_enc": "b_enc", "b_dec": "b_dec"}
# The repo name appears as a path part, or inside the HF cache's ``models--google--<repo>``.
_REPO_RE = re.compile(
    r"gemma-scope-(?P<size>\d+b)-(?P<variant>pt|it)-(?P<kind>res|mlp|att)(?:-canonical)?(?:/|$)"
)
_LAYER_RE = re.compile(r"(?:^|/)layer_(\d+)/")
_KIND_SITES = {"res": "resid_post", "mlp": "mlp_out"}


def read_params(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The tensors of a ``params.npz`` (no pickles) or ``params.safetensors`` file."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    if not path.is_file():
        raise FileNotFoundError(f"SAE weights not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: torch.from_numpy(np.array(data[k])) for k in data.files}
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise ValueError(
                f"Refused to load {path}: reading it would unpickle objects (np.load "
                "allow_pickle=False); it is corrupt or not a plain-array .npz."
            ) from None
        raise ValueError(f"SAE weights file {path} is corrupt or not a numpy .npz: {e}") from e
    except (zipfile.BadZipFile, OSError, EOFError, KeyError) as e:
        raise ValueError(f"SAE weights file {path} is corrupt or not a numpy .npz: {e}") from e


def where_from_path(path: str) -> dict[str, Any]:
    """Layer, site and model when ``path`` follows Gemma Scope's layout."""
    text = path.replace("\\", "/")
    repo, layer_m = _REPO_RE.search(text), _LAYER_RE.search(text)
    if repo is None:
        return {}
    model = f"google/gemma-2-{repo['size']}" + ("-it" if repo["variant"] == "it" else "")
    out: dict[str, Any] = {"model_name": model, "extra": {"gemma_scope_kind": repo["kind"]}}
    if layer_m is None:
        if repo["kind"] == "res" and re.search(r"(?:^|/)embedding/", text):
            # The embedding SAEs read the (scaled) embeddings: the input of block 0.
            out.update(layer=0, site="resid_pre")
        return out
    layer = int(layer_m[1])
    out["layer"] = layer
    if repo["kind"] == "att":
        # Trained on the concatenated head outputs before o_proj (TransformerLens hook_z).
        out["extra"]["hook_name"] = f"blocks.{layer}.attn.hook_z"
        out["extra"]["note"] = "attention SAE on hook_z (heads before o_proj): not a hook site"
    else:
        site = _KIND_SITES[repo["kind"]]
        out["site"] = site
    return out


def gemmascope_to_sae(params: dict[str, Tensor], *, source: str = "<params>") -> SAE:
    """Build a JumpReLU :class:`SAE` from Gemma Scope tensors."""
    missing = [k for k in (*_KEYS, "threshold") if k not in params]
    if missing:
        raise ValueError(f"{source}: not a Gemma Scope SAE, it lacks {', '.join(missing)}.")
    try:
        check_weights(params, (*_KEYS, "threshold"))
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None
    w_enc = params["w_enc"]
    if w_enc.ndim != 2:
        raise ValueError(f"{source}: w_enc must be 2-D [d_in, d_sae], got {tuple(w_enc.shape)}.")
    where = where_from_path(source)
    extra = {"format": "gemmascope", **where.pop("extra", {})}
    cfg = SAEConfig(
        d_in=int(w_enc.shape[0]),
        d_sae=int(w_enc.shape[1]),
        activation="jumprelu",
        apply_b_dec_to_input=False,
        extra=extra,
        **where,
    )
    state = {_KEYS[k]: params[k] for k in _KEYS}
    state["threshold"] = params["threshold"]
    try:
        return build_sae(cfg, state)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None


def find_params(folder: str | os.PathLike[str]) -> Path | None:
    """The params file in ``folder`` (safetensors preferred), or ``None``."""
    for name in PARAM_FILES:
        candidate = Path(folder) / name
        if candidate.is_file():
            return candidate
    return None


def load_gemmascope(path: str | os.PathLike[str]) -> SAE:
    """Load a Gemma Scope ``params.npz`` / ``params.safetensors`` file, or a folder holding one."""
    path = Path(path).expanduser()
    if path.is_dir():
        found = find_params(path)
        if found is None:
            raise FileNotFoundError(f"No {' or '.join(PARAM_FILES)} in {path}")
        path = found
    return gemmascope_to_sae(read_params(path), source=str(path))
