"""Tiny random SAEs written in each real on-disk format (for the tests/test_sae_*.py files).

These only produce files; the expected maths lives in each test file, written independently
of the package.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import save_file

D_IN, D_SAE = 32, 128


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def openai_state(
    d: int = D_IN, n: int = D_SAE, k: int | None = 8, seed: int = 0, activation: bool = True
) -> dict[str, Any]:
    """An OpenAI ``sparse_autoencoder`` state dict; ``k=None`` gives a ReLU (v1/v4) SAE."""
    g = _gen(seed)
    state: dict[str, Any] = {
        "pre_bias": torch.randn(d, generator=g) * 0.1,
        "encoder.weight": torch.randn(n, d, generator=g) / d**0.5,
        "latent_bias": torch.randn(n, generator=g) * 0.1,
        "decoder.weight": torch.randn(d, n, generator=g) / n**0.5,
        "stats_last_nonzero": torch.zeros(n, dtype=torch.long),
        "latents_activation_frequency": torch.ones(n),
        "latents_mean_square": torch.zeros(n),
    }
    if k is not None:
        state["activation"] = "TopK"
        state["activation_state_dict"] = {"k": k, "postact_fn": "ReLU"}
    elif activation:
        state["activation"] = "ReLU"
        state["activation_state_dict"] = {}
    return state


def write_openai(path: Path, state: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def saelens_state(
    architecture: str, d: int = D_IN, n: int = D_SAE, seed: int = 0
) -> dict[str, torch.Tensor]:
    """SAELens tensor names: ``W_enc``, ``b_enc`` (``b_gate``, ``r_mag``, ``b_mag``), ..."""
    g = _gen(seed)
    state = {
        "W_enc": torch.randn(d, n, generator=g) / d**0.5,
        "b_enc": torch.randn(n, generator=g) * 0.1,
        "W_dec": torch.randn(n, d, generator=g) / n**0.5,
        "b_dec": torch.randn(d, generator=g) * 0.1,
    }
    if architecture == "jumprelu":
        state["threshold"] = torch.rand(n, generator=g) * 0.3
    if architecture == "gated":
        state["b_gate"] = state.pop("b_enc")
        state["r_mag"] = torch.randn(n, generator=g) * 0.2
        state["b_mag"] = torch.randn(n, generator=g) * 0.1
    return state


def saelens_cfg(architecture: str, d: int = D_IN, n: int = D_SAE, **over: Any) -> dict[str, Any]:
    """A SAELens 6 style ``cfg.json`` (model-side keys under ``metadata``)."""
    cfg: dict[str, Any] = {
        "architecture": architecture,
        "d_in": d,
        "d_sae": n,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "model_name": "tiny-model",
            "hook_name": "blocks.2.hook_resid_pre",
            "sae_lens_version": "6.5.0",
        },
    }
    if architecture == "topk":
        cfg["k"] = 8
    cfg.update(over)
    return cfg


def write_saelens(folder: Path, cfg: dict[str, Any], state: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file(
        {k: v.contiguous() for k, v in state.items()}, str(folder / "sae_weights.safetensors")
    )
    return folder


def gemmascope_params(d: int = D_IN, n: int = D_SAE, seed: int = 0) -> dict[str, np.ndarray]:
    g = np.random.default_rng(seed)
    return {
        "w_enc": (g.standard_normal((d, n)) / d**0.5).astype(np.float32),
        "w_dec": (g.standard_normal((n, d)) / n**0.5).astype(np.float32),
        "b_enc": (g.standard_normal(n) * 0.1).astype(np.float32),
        "b_dec": (g.standard_normal(d) * 0.1).astype(np.float32),
        "threshold": (g.random(n) * 0.3).astype(np.float32),
    }


def write_gemmascope(path: Path, params: dict[str, np.ndarray]) -> Path:
    """``path`` ends in ``.npz`` or ``.safetensors``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npz":
        np.savez(path, **params)
    else:
        save_numpy(params, str(path))
    return path
