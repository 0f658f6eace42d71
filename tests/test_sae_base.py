"""The SAE's pre-activations: a few rows through a wide encoder are summed in chunks of input
features; every path equals the plain affine map."""

from __future__ import annotations

import pytest
import torch

from hf_sae_steer.sae.base import SAEConfig, build_sae


def _sae(d_in: int, d_sae: int):
    g = torch.Generator().manual_seed(3)
    state = {
        "W_enc": torch.randn(d_in, d_sae, generator=g) / d_in**0.5,
        "b_enc": torch.randn(d_sae, generator=g) * 0.1,
        "W_dec": torch.randn(d_sae, d_in, generator=g) / d_sae**0.5,
        "b_dec": torch.randn(d_in, generator=g) * 0.1,
    }
    return build_sae(SAEConfig(d_in, d_sae, "topk", 16), state), state


@pytest.mark.parametrize("d_sae", [512, 4096, 5003])
@pytest.mark.parametrize("tokens", [1, 2, 8, 32, 33, 200])
def test_pre_activations_equal_the_plain_affine_map(d_sae, tokens):
    """``(x - b_dec) @ W_enc + b_enc``, written out here in float64 without the library, for
    row counts on both sides of the chunked path (2..32 rows, 4,096 latents or more) and an
    input width that is not a multiple of the chunk."""
    sae, state = _sae(72, d_sae)
    x = torch.randn(tokens, 72, generator=torch.Generator().manual_seed(tokens)) * 3
    state = {k: v.double() for k, v in state.items()}
    want = (x.double() - state["b_dec"]) @ state["W_enc"] + state["b_enc"]
    got = sae.encode_pre(x.view(1, tokens, 72))
    assert got.shape == (1, tokens, d_sae) and got.dtype == torch.float32
    torch.testing.assert_close(got[0].double(), want, rtol=1e-5, atol=1e-5)
