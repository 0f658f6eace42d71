"""The typed recommendation and calibration records read and write the artifact's JSON unchanged:
every artifact that 0.2 and 0.3 wrote loads, and saves, the same."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hf_sae_steer.scores.recommendation import Calibration, FluencyCalibration, Recommendation
from hf_sae_steer.scores.record import FeatureScores

DEMO = Path(__file__).resolve().parents[1] / "storage" / "demo"
WRITTEN_AT_SAVE = {"library_version", "scores_sha256"}  # the writer's version, the tensors' hash


@pytest.mark.parametrize("name", ["scores", "scores_seed"])
def test_shipped_artifacts_load_to_the_same_json(name, tmp_path):
    on_disk = json.loads((DEMO / name / "steering_config.json").read_text())
    scores = FeatureScores.from_pretrained(DEMO / name)
    again = json.loads(json.dumps(scores.to_config()))
    for key in WRITTEN_AT_SAVE:
        on_disk.pop(key, None), again.pop(key, None)
    assert again == on_disk
    assert list(again) == list(on_disk)  # the same keys in the same order
    rec = on_disk["recommended"]
    assert list(scores.recommended.to_json()) == list(rec)
    saved = json.loads(
        (scores.save_pretrained(tmp_path / name) / "steering_config.json").read_text()
    )
    for key in WRITTEN_AT_SAVE:
        saved.pop(key, None)
    assert saved == on_disk


def test_unknown_keys_survive_and_dict_reads_still_work():
    data = {
        "method": "add", "strength": 2.5, "preserve_error": True, "norm_fraction": 0.5,
        "why": "because", "calibrated": True, "from_the_future": [1, 2],
    }  # fmt: skip
    rec = Recommendation.from_json(data)
    assert rec.method == "add" and rec.strength == 2.5 and rec.calibrated is True
    assert rec.to_json() == data and list(rec.to_json()) == list(data)
    assert rec["method"] == "add" and rec.get("missing", 7) == 7 and "why" in rec
    assert rec == data and rec == Recommendation.from_json(dict(data))

    fluency = {"method": "add", "target_ratio": 1.5, "norm_fraction": 0.7, "strength": 3.0,
               "prompts": 24, "curve": [{"norm_fraction": 0.5, "strength": 2.0,
                                         "perplexity_ratio": 1.2}]}  # fmt: skip
    calibration = Calibration.from_json(
        {"mean_norm": 4.0, "mean_norm_raw": 9.0, "fluency": fluency, "note": "x"}
    )
    assert isinstance(calibration.fluency, FluencyCalibration)
    assert calibration.fluency.strength == 3.0
    assert calibration["fluency"]["curve"][0]["strength"] == 2
    assert calibration.to_json()["note"] == "x"
    assert Calibration.from_json(None) == {} and not Calibration.from_json({})


def test_calibrated_to_keeps_the_method_and_says_why():
    rec = Recommendation("add", 2.0, True, 0.5, "norm fraction")
    fluency = FluencyCalibration("add", 1.5, 0.75, 3.0, 24, [])
    chosen = rec.calibrated_to(fluency)
    assert (chosen.method, chosen.strength, chosen.norm_fraction, chosen.calibrated) == (
        "add", 3.0, 0.75, True,
    )
    assert "24 neutral prompts" in chosen.why and "1.5x" in chosen.why
    assert rec.strength == 2.0  # a new record: the artifact's own stays as it was


def test_a_searched_calibration_records_how_and_older_ones_stay_as_they_were():
    old = {"method": "add", "target_ratio": 1.5, "norm_fraction": 0.7, "strength": 3.0,
           "prompts": 24, "curve": []}  # fmt: skip
    assert FluencyCalibration.from_json(old).to_json() == old  # no new keys written into it
    new = {**old, "curve": [{"norm_fraction": 0.5, "strength": 2.0, "perplexity_ratio": 1.2,
                             "continuations": 47}], "search": "secant", "samples": 2}  # fmt: skip
    fluency = FluencyCalibration.from_json(new)
    assert (fluency.search, fluency.samples, fluency.extra) == ("secant", 2, {})
    assert fluency.to_json() == new and list(fluency.to_json()) == list(new)
