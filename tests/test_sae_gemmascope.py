"""Gemma Scope params files: Gemma Scope's JumpReLU equations and the repo layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sae_factories import D_IN, D_SAE, gemmascope_params, write_gemmascope

from hf_sae_steer.sae import load_sae


def ref_forward(p: dict[str, np.ndarray], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gemma Scope's tutorial JumpReLUSAE: no b_dec subtraction, no normalisation."""
    t = {k: torch.from_numpy(v) for k, v in p.items()}
    pre = x @ t["w_enc"] + t["b_enc"]
    acts = (pre > t["threshold"]) * torch.relu(pre)
    return acts, acts @ t["w_dec"] + t["b_dec"]


@pytest.mark.parametrize("name", ["params.npz", "params.safetensors"])
@pytest.mark.parametrize("as_folder", [False, True])
def test_matches_gemma_scope(tmp_path: Path, name: str, as_folder: bool) -> None:
    params = gemmascope_params(seed=1)
    path = write_gemmascope(tmp_path / "sae" / name, params)
    sae = load_sae(path.parent if as_folder else path)
    c = sae.cfg
    assert (c.activation, c.apply_b_dec_to_input, c.normalize_activations) == (
        "jumprelu",
        False,
        "none",
    )
    assert (c.d_in, c.d_sae, c.layer, c.site) == (D_IN, D_SAE, None, None)
    x = torch.randn(2, 6, D_IN)
    acts, out = ref_forward(params, x)
    assert (acts != 0).any() and (acts == 0).any()
    torch.testing.assert_close(sae.encode(x), acts, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sae(x), out, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("rel", "expected"),
    [
        (
            "gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71",
            (20, "resid_post", "blocks.20.hook_resid_post", "google/gemma-2-2b"),
        ),
        (
            "models--google--gemma-scope-9b-it-res/snapshots/abc/layer_9/width_131k/average_l0_5",
            (9, "resid_post", "blocks.9.hook_resid_post", "google/gemma-2-9b-it"),
        ),
        (
            "gemma-scope-2b-pt-mlp-canonical/layer_3/width_16k/canonical",
            (3, "mlp_out", "blocks.3.hook_mlp_out", "google/gemma-2-2b"),
        ),
        (
            "gemma-scope-2b-pt-att/layer_7/width_16k/average_l0_20",
            (7, None, "blocks.7.attn.hook_z", "google/gemma-2-2b"),
        ),
        (
            "gemma-scope-2b-pt-res/embedding/width_4k/average_l0_6",
            (0, "resid_pre", "blocks.0.hook_resid_pre", "google/gemma-2-2b"),
        ),
        ("my-saes/layer_20/width_16k", (None, None, None, None)),
    ],
)
def test_site_from_layout(tmp_path: Path, rel: str, expected: tuple) -> None:
    path = write_gemmascope(tmp_path / rel / "params.npz", gemmascope_params())
    c = load_sae(path).cfg
    assert (c.layer, c.site, c.hook_name, c.model_name) == expected


def test_pickled_npz_refused(tmp_path: Path) -> None:
    params: dict = dict(gemmascope_params())
    params["threshold"] = np.array([object()] * D_SAE, dtype=object)
    path = tmp_path / "params.npz"
    np.savez(path, **params)
    with pytest.raises(ValueError, match=r"Refused.*params\.npz.*allow_pickle=False"):
        load_sae(path)


@pytest.mark.parametrize("name", ["params.npz", "params.safetensors"])
def test_corrupt(tmp_path: Path, name: str) -> None:
    path = write_gemmascope(tmp_path / name, gemmascope_params())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"{name} is corrupt"):
        load_sae(path)


def test_missing_and_misshaped(tmp_path: Path) -> None:
    params = gemmascope_params()
    del params["threshold"]
    with pytest.raises(ValueError, match="lacks threshold"):
        load_sae(write_gemmascope(tmp_path / "a" / "params.npz", params))
    params = gemmascope_params()
    params["b_dec"] = np.zeros(D_IN + 2, dtype=np.float32)
    with pytest.raises(ValueError, match=r"params\.npz.*b_dec has shape"):
        load_sae(write_gemmascope(tmp_path / "b" / "params.npz", params))
