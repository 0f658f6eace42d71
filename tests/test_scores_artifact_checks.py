"""Tampered or crafted score artifacts are refused on loading with one message naming the file
and the field (issue 16), never an internal error later in steering."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from hf_sae_steer import FeatureScores
from hf_sae_steer.cli.main import main
from hf_sae_steer.scores.artifact_checks import METHOD_NAMES
from hf_sae_steer.scores.record import _sha256
from hf_sae_steer.steering.names import METHODS

D_SAE = 16


@pytest.fixture
def artifact(tmp_path):
    g = torch.Generator().manual_seed(0)
    scores = FeatureScores(
        scores=torch.rand(D_SAE, generator=g),
        coverage=0.5,
        layer=1,
        site="resid_post",
        rule="mean_diff",
        recommended={"method": "add", "strength": 2.0, "preserve_error": True,
                     "norm_fraction": 0.5, "why": "a test"},  # fmt: skip
        calibration={"mean_norm": 3.0, "mean_norm_raw": 4.0},
        stats={
            "latents": torch.tensor([1, 3]),
            "weights": torch.tensor([0.5, 0.2]),
            "typical_activation": torch.rand(D_SAE, generator=g),
            "delta": torch.rand(8, generator=g),
        },
        effect={"next_token": {"label": "next token", "raised": [[" fever", 1.5]],
                               "lowered": [[" the", -0.5]], "raised_ids": [7],
                               "lowered_ids": [3], "words": [[" fever", 1.5]],
                               "word_ids": [7]}, "lens": []},  # fmt: skip
    )
    return scores.save_pretrained(tmp_path / "art")


def tamper(folder, change):
    path = folder / "steering_config.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))


def put(keys, value):
    def change(config):
        target = config
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return change


CASES = [
    (("recommended",), [], "'recommended' must be"),
    (("recommended",), "add", "'recommended' must be"),
    (("recommended", "method"), 5, "'recommended.method' must be"),
    (("recommended", "method"), "banana", "'recommended.method' must be"),
    (("recommended", "strength"), "big", "'recommended.strength' must be"),
    (("recommended", "strength"), math.nan, "'recommended.strength' must be"),
    (("recommended", "preserve_error"), "yes", "'recommended.preserve_error' must be"),
    (("coverage",), "high", "'coverage' must be"),
    (("coverage",), 2.0, "'coverage' must be"),
    (("layer",), "1", "'layer' must be"),
    (("layer",), -1, "'layer' must be"),
    (("layer",), True, "'layer' must be"),
    (("site",), 5, "'site' must be"),
    (("calibration",), [1.0], "'calibration' must be"),
    (("calibration", "mean_norm"), "x", "'calibration.mean_norm' must be"),
    (("reference",), "x", "'reference' must be"),
    (("reference", "size"), -3, "'reference.size' must be"),
    (("options",), [], "'options' must be"),
    (("report",), [], "'report' must be"),
    (("report", "coverage"), "x", "'report.coverage' must be"),
    (("report", "warnings"), "w", "'report.warnings' must be"),
    (("sae", "d_sae"), "16", "'sae.d_sae' must be"),
    (("sae", "fingerprint"), 5, "'sae.fingerprint' must be"),
    (("format_version",), "2", "'format_version' must be"),
    (("effect",), [], "'effect' must be"),
    (("effect", "lens"), "x", "'effect.lens' must be"),
    (("effect", "next_token", "label"), 5, "'effect.next_token.label' must be"),
    (("effect", "next_token", "raised"), [["a", "x"]], "'effect.next_token.raised' must be"),
    (("effect", "next_token", "words"), [["a"]], "'effect.next_token.words' must be"),
    (("effect", "next_token", "raised_ids"), [-1], "'effect.next_token.raised_ids' must be"),
    (("effect", "next_token", "lowered"), [["a", 1.0]] * 1001, "'effect.next_token.lowered'"),
]


@pytest.mark.parametrize("keys, value, message", CASES)
def test_a_tampered_config_names_the_file_and_field(artifact, keys, value, message):
    tamper(artifact, put(keys, value))
    with pytest.raises(ValueError, match="steering_config.json") as caught:
        FeatureScores.from_pretrained(artifact)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_the_methods_an_artifact_may_recommend_are_the_steering_methods():
    assert METHOD_NAMES == METHODS


def test_deeply_nested_json_is_refused_by_name(artifact):
    (artifact / "steering_config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match=r"steering_config.json is corrupt \(nested too deeply"):
        FeatureScores.from_pretrained(artifact)
    tamper_deep = '{"options": ' + "[" * 100_000 + "]" * 100_000 + "}"
    (artifact / "steering_config.json").write_text(tamper_deep)
    with pytest.raises(ValueError, match="nested too deeply"):
        FeatureScores.from_pretrained(artifact)


def recraft(folder, change):
    """Change the tensors and record their new hash: a crafted, self-consistent artifact."""
    tensors = load_file(folder / "scores.safetensors")
    change(tensors)
    save_file(tensors, folder / "scores.safetensors")
    tamper(folder, put(("scores_sha256",), _sha256(folder / "scores.safetensors")))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: t.update(latents=torch.tensor([1, D_SAE + 5])), "'latents'"),
        (lambda t: t.update(latents=torch.tensor([-1, 3])), "'latents'"),
        (lambda t: t.update(latents=torch.tensor([1.5, 3.0])), "'latents'"),
        (lambda t: t.update(weights=torch.tensor([0.5])), "'weights'"),
        (lambda t: t.update(weights=torch.tensor([math.nan, 0.2])), "'weights'"),
        (lambda t: t.pop("weights"), "'latents' and 'weights'"),
        (lambda t: t.update(typical_activation=torch.rand(D_SAE + 1)), "'typical_activation'"),
        (lambda t: t.update(delta=torch.full((8,), math.inf)), "'delta'"),
    ],
)
def test_crafted_tensors_name_the_file_and_tensor(artifact, change, message):
    recraft(artifact, change)
    with pytest.raises(ValueError, match="scores.safetensors") as caught:
        FeatureScores.from_pretrained(artifact)
    assert message in str(caught.value)


def test_a_corrupt_tensor_file_is_named(artifact):
    (artifact / "scores.safetensors").write_bytes(b"\xff" * 64)
    tamper(artifact, put(("scores_sha256",), _sha256(artifact / "scores.safetensors")))
    with pytest.raises(ValueError, match="scores.safetensors is corrupt"):
        FeatureScores.from_pretrained(artifact)


def test_the_command_line_says_exit_2_with_the_file(artifact, capsys):
    from pathlib import Path

    demo = Path(__file__).resolve().parents[1] / "storage" / "demo"
    tamper(artifact, put(("recommended",), ["add", 2.0]))
    code = main(["generate", "--model", str(demo / "model"), "--sae", str(demo / "sae"),
                 "--scores", str(artifact), "--prompt", "hi", "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2, err
    assert "steering_config.json" in err and "'recommended'" in err
    assert len(err.strip().splitlines()) == 1
