"""Shared by the scoring-walk tests: a tiny scoring setup and what "the same scores" means."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from tiny_models import letters, varied_prompts

from hf_sae_steer import FeatureScores

REFERENCE = varied_prompts(30)
ALIGNMENT = ["Symptoms include fever and a persistent cough.", "The doctor treated the infection."]


def fit_tiny(setup: tuple, reference: Any = None, sae: Any = None, **kw: Any) -> FeatureScores:
    """``FeatureScores.fit`` on the tiny model with the letters embedder (reference rule)."""
    model, tok, default_sae = setup
    kw.setdefault("rule", "seed")
    kw.setdefault("calibrate_strength", False)  # these check sums and scores, not strengths
    kw.setdefault("alignment", ALIGNMENT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a random SAE reconstructs badly: the FVU warning
        return FeatureScores.fit(
            model, tok, sae or default_sae, reference=REFERENCE if reference is None else reference,
            embedder=letters, progress=False, batch_size=4, **kw,
        )  # fmt: skip


def assert_same_scores(got: FeatureScores, want: FeatureScores) -> None:
    """Scores to 1e-6, the same coverage, sizes, hashes, fire counts and report."""
    torch.testing.assert_close(got.scores, want.scores, atol=1e-6, rtol=0)
    assert got.coverage == want.coverage
    assert (got.reference_size, got.reference_hash) == (want.reference_size, want.reference_hash)
    assert (got.alignment_size, got.alignment_hash) == (want.alignment_size, want.alignment_hash)
    for name in ("ref_fire_counts", "align_fire_counts"):
        assert torch.equal(got.stats[name], want.stats[name])
    for name in ("mass", "typical_activation"):
        torch.testing.assert_close(got.stats[name], want.stats[name], atol=1e-6, rtol=1e-6)
    mine, theirs = got.report().to_dict(), want.report().to_dict()
    assert mine.keys() == theirs.keys()
    for key, value in theirs.items():
        if isinstance(value, float):
            assert mine[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
        else:
            assert mine[key] == value, key
