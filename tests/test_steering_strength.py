"""Strength arithmetic (steering/strength.py): reading an artifact's calibration."""

from __future__ import annotations

from pathlib import Path

import pytest

from hf_sae_steer.scores.record import load_scores
from hf_sae_steer.steering.strength import fluency_strength

DEMO = Path(__file__).resolve().parents[1] / "storage" / "demo"


def test_calibrated_strength_is_the_measured_one():
    scores = load_scores(DEMO / "scores")
    assert fluency_strength("add", scores) == scores.calibration.fluency.strength
    assert fluency_strength("vector", scores) is None  # the default norm fraction's
    assert fluency_strength("add", load_scores(DEMO / "scores_seed")) is None


@pytest.mark.parametrize(
    "artifact, method, says",
    [
        ("scores_seed", "swap", "these scores have none"),  # issue 23: "one for no method"
        ("scores_seed", "clamp", "these scores have none"),
        ("scores", "swap", "it measured add only, not swap"),
        ("scores", "clamp", "it measured add only, not clamp"),
    ],
)
def test_calibrated_strength_that_was_never_measured_reads_well(artifact, method, says):
    with pytest.raises(ValueError) as caught:
        fluency_strength(method, load_scores(DEMO / artifact))
    message = str(caught.value)
    assert message.startswith('The strength "calibrated" is what the fluency calibration of ')
    assert says in message and f"give {method} a number as its strength" in message
    assert "\n" not in message and "no method" not in message
    assert ("or steer with add" in message) == (artifact == "scores")
