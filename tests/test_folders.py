"""Output folders: foreign files are never replaced without consent, and writes are all or
nothing (score artifacts, SAE folders, evaluation folders)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from hf_sae_steer import FeatureScores
from hf_sae_steer.folders import STALE_SECONDS, check_output_folder, write_folder
from hf_sae_steer.sae import SAEConfig, build_sae

OURS = ("a.txt", "b.txt")


def write_ab(text):
    def write(folder):
        (folder / "a.txt").write_text(text)
        (folder / "b.txt").write_text(text)

    return write


def test_new_empty_and_own_folders_are_written(tmp_path):
    target = tmp_path / "out"
    write_folder(target, OURS, write_ab("1"))
    assert sorted(p.name for p in target.iterdir()) == ["a.txt", "b.txt"]
    # An earlier output of the same kind (recognised by is_ours) is replaced.
    write_folder(target, OURS, write_ab("2"), is_ours=lambda p: (p / "a.txt").exists())
    assert (target / "b.txt").read_text() == "2"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folder left behind


def test_foreign_files_are_refused_then_kept_with_overwrite(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "config.json").write_text("{}")
    (target / "a.txt").write_text("a user's own file with our name")
    with pytest.raises(FileExistsError, match="already holds files this command did not write"):
        write_folder(target, OURS, write_ab("new"))
    assert (target / "a.txt").read_text() == "a user's own file with our name"
    write_folder(target, OURS, write_ab("new"), overwrite=True)
    assert (target / "config.json").read_text() == "{}"  # kept
    assert (target / "a.txt").read_text() == "new"  # replaced, with consent
    with pytest.raises(FileExistsError, match="is a file, not a folder"):
        check_output_folder(target / "config.json", OURS)


def test_a_failed_write_leaves_the_old_folder_and_no_temporary(tmp_path):
    target = tmp_path / "out"
    write_folder(target, OURS, write_ab("old"))

    def half(folder):
        (folder / "a.txt").write_text("new")
        raise KeyboardInterrupt  # killed between two files

    with pytest.raises(KeyboardInterrupt):
        write_folder(target, OURS, half, is_ours=lambda p: True)
    assert (target / "a.txt").read_text() == "old" and (target / "b.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_killed_writes_leftover_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "out"
    leftover = tmp_path / ".out.tmp-dead"
    leftover.mkdir()
    (leftover / "big.bin").write_bytes(b"0" * 1000)
    old = os.stat(leftover).st_mtime - STALE_SECONDS - 1
    os.utime(leftover, (old, old))
    write_folder(target, OURS, write_ab("1"))
    assert not leftover.exists()


@pytest.fixture
def scores():
    return FeatureScores(scores=torch.rand(16), coverage=0.5, layer=0, site="resid_post")


def test_score_artifacts_keep_a_users_model_card(scores, tmp_path):
    folder = tmp_path / "repo"
    folder.mkdir()
    (folder / "README.md").write_text("# my model card\n")
    with pytest.raises(FileExistsError, match="README.md"):
        scores.save_pretrained(folder)
    assert (folder / "README.md").read_text() == "# my model card\n"
    scores.save_pretrained(tmp_path / "art")
    scores.save_pretrained(tmp_path / "art")  # re-saving over our own artifact is fine


def test_an_inconsistent_artifact_is_refused(scores, tmp_path):
    a = scores.save_pretrained(tmp_path / "a")
    other = FeatureScores(scores=torch.rand(16), coverage=0.5)
    b = other.save_pretrained(tmp_path / "b")
    os.replace(b / "scores.safetensors", a / "scores.safetensors")  # a mixed copy
    with pytest.raises(ValueError, match="inconsistent"):
        FeatureScores.from_pretrained(a)


def test_incomplete_configs_name_the_file(scores, tmp_path):
    folder = scores.save_pretrained(tmp_path / "a")
    config = json.loads((folder / "steering_config.json").read_text())
    del config["sae"]
    (folder / "steering_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"steering_config.json lacks sae"):
        FeatureScores.from_pretrained(folder)
    (folder / "steering_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="steering_config.json is corrupt"):
        FeatureScores.from_pretrained(folder)


def test_sae_folders_are_written_atomically(tmp_path):
    cfg = SAEConfig(d_in=4, d_sae=8, activation="relu")
    sae = build_sae(cfg, {"W_enc": torch.ones(4, 8), "b_enc": torch.zeros(8),
                          "W_dec": torch.ones(8, 4), "b_dec": torch.zeros(4)})  # fmt: skip
    sae.save_pretrained(tmp_path / "sae")
    with pytest.raises(FileExistsError):
        sae.save_pretrained(tmp_path / "sae")  # a SAELens folder carries no mark of ours
    sae.save_pretrained(tmp_path / "sae", overwrite=True)
    assert sorted(p.name for p in (tmp_path / "sae").iterdir()) == [
        "cfg.json", "sae_weights.safetensors"]  # fmt: skip
