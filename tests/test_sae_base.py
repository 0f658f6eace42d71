"""The SAE's encoder: stored latent by latent and applied in blocks, equal to the plain matmul."""

from __future__ import annotations

import pytest
import torch

from hf_sae_steer.sae.base import ENCODE_BLOCK, SAEConfig, build_sae


def _sae(d_in: int, d_sae: int, apply_b_dec: bool = True):
    g = torch.Generator().manual_seed(3)
    state = {
        "W_enc": torch.randn(d_in, d_sae, generator=g) / d_in**0.5,
        "b_enc": torch.randn(d_sae, generator=g) * 0.1,
        "W_dec": torch.randn(d_sae, d_in, generator=g) / d_sae**0.5,
        "b_dec": torch.randn(d_in, generator=g) * 0.1,
    }
    cfg = SAEConfig(d_in, d_sae, "topk", 16, apply_b_dec_to_input=apply_b_dec)
    return build_sae(cfg, state), state


@pytest.mark.parametrize("d_sae", [ENCODE_BLOCK // 2, 2 * ENCODE_BLOCK + 1, 5 * ENCODE_BLOCK - 7])
@pytest.mark.parametrize("rows", [1, 8, 37])
def test_pre_activations_equal_the_plain_affine_map(d_sae, rows):
    """Blocks or not, the pre-activations are ``(x - b_dec) @ W_enc + b_enc``: checked in
    float64, written out here without the library."""
    sae, state = _sae(48, d_sae)
    x = torch.randn(rows, 3, 48, generator=torch.Generator().manual_seed(rows))
    want = (x.double() - state["b_dec"].double()) @ state["W_enc"].double() + state[
        "b_enc"].double()  # fmt: skip
    got = sae.encode_pre(x)
    assert got.shape == (rows, 3, d_sae) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_the_encoder_is_stored_latent_by_latent_and_saved_as_saelens_lays_it_out(tmp_path):
    from hf_sae_steer.sae.loading import load_sae

    sae, state = _sae(48, 3 * ENCODE_BLOCK)
    assert sae.W_enc.shape == (48, 3 * ENCODE_BLOCK) and sae.W_enc.stride() == (1, 48)
    assert torch.equal(sae.W_enc, state["W_enc"])
    fingerprint = sae.fingerprint()
    again = load_sae(str(sae.save_pretrained(tmp_path / "sae")))
    assert torch.equal(again.W_enc, state["W_enc"]) and again.W_enc.stride() == (1, 48)
    assert again.fingerprint() == fingerprint
    moved = again.to(torch.bfloat16)
    assert moved.W_enc.stride() == (1, 48) and moved.fingerprint() == fingerprint
    x = torch.randn(5, 48)
    torch.testing.assert_close(moved.encode_pre(x.bfloat16()).float(), sae.encode_pre(x),
                               rtol=0.05, atol=0.05)  # fmt: skip
