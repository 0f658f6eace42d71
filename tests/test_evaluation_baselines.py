"""Directional ablation against a plain projection of the hidden state, on a tiny GPT-2."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_gpt2

from hf_sae_steer.evaluation.baselines import directional_ablation
from hf_sae_steer.sites.names import Site


def block_output(model, ids, layer):
    """The hidden state after block ``layer`` (transformers' own recording)."""
    return model(ids, output_hidden_states=True).hidden_states[layer + 1]


@pytest.mark.parametrize("strength", [1.0, 2.0, 0.5])
def test_ablation_projects_the_direction_out_of_the_site(strength):
    model = tiny_gpt2(64, n_layer=2, d=32).eval()
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(0))
    direction = torch.randn(32, generator=torch.Generator().manual_seed(1)) * 3.0
    with torch.no_grad():
        before = block_output(model, ids, 0)
        with directional_ablation(model, Site(0, "resid_post"), direction, strength):
            after = block_output(model, ids, 0)
        again = block_output(model, ids, 0)
    unit = direction / direction.norm()
    want = before - strength * (before @ unit).unsqueeze(-1) * unit
    assert torch.allclose(after, want, atol=1e-5)
    if strength == 1.0:  # nothing of the direction is left
        assert (after @ unit).abs().max() < 1e-4
    assert torch.equal(again, before)  # the hooks are gone


def test_ablation_refuses_a_zero_direction_and_leaves_no_hook():
    model = tiny_gpt2(64, n_layer=2, d=32).eval()
    with pytest.raises(ValueError, match="non-zero"):
        with directional_ablation(model, Site(0, "resid_post"), torch.zeros(32)):
            pass
    assert not model.transformer.h[0]._forward_hooks
