"""Score artifacts: save/load (local, offline HF cache, push), CSV import, the SAE check."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import shutil
import warnings

import huggingface_hub
import pytest
import torch
import yaml
from huggingface_hub import constants

from hf_sae_steer import FeatureScores
from hf_sae_steer.sae import SAEConfig, build_sae
from hf_sae_steer.sae.loading import load_sae
from hf_sae_steer.scores.compatibility import check_compatible

D, N = 32, 40
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def make_sae(folder, seed=0, n=N):
    g = torch.Generator().manual_seed(seed)
    state = {
        "W_enc": torch.randn(D, n, generator=g),
        "b_enc": torch.zeros(n),
        "W_dec": torch.randn(n, D, generator=g),
        "b_dec": torch.zeros(D),
    }
    cfg = SAEConfig(d_in=D, d_sae=n, activation="topk", k=4, layer=1, site="resid_post")
    return load_sae(build_sae(cfg, state).save_pretrained(folder))


@pytest.fixture(scope="module")
def sae(tmp_path_factory):
    return make_sae(tmp_path_factory.mktemp("sae") / "sae")


def lengths(texts: list[str]) -> torch.Tensor:
    return torch.tensor([[len(t), t.count("e")] for t in texts], dtype=torch.float32)


@pytest.fixture(scope="module")
def fitted(sae, tokenizer):
    from tiny_models import tiny_gpt2

    model = tiny_gpt2(len(tokenizer), d=D)
    model.config._name_or_path = "openai-community/gpt2"
    reference = ["The patient has a fever.", "Engineers built a bridge of steel.", "A farmer."]
    alignment = ["Symptoms include fever and cough."]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return FeatureScores.fit(
            model,
            tokenizer,
            sae,
            reference=reference,
            alignment=alignment,
            embedder=lengths,
            progress=False,
        )


def assert_same(a: FeatureScores, b: FeatureScores) -> None:
    assert torch.equal(a.scores, b.scores) and a.scores.dtype == b.scores.dtype
    assert a.stats.keys() == b.stats.keys()
    for name in a.stats:
        assert (
            torch.equal(a.stats[name], b.stats[name]) and a.stats[name].dtype == b.stats[name].dtype
        )
    assert a.to_config() == b.to_config()
    assert a.report() == b.report()


def test_save_and_load_local(fitted, tmp_path):
    folder = fitted.save_pretrained(tmp_path / "art")
    assert sorted(p.name for p in folder.iterdir()) == [
        ".hf_sae_steer-manifest.json",  # which files we wrote (hf_sae_steer.folders)
        "README.md",
        "scores.safetensors",
        "steering_config.json",
    ]
    loaded = FeatureScores.from_pretrained(folder)
    assert_same(fitted, loaded)
    assert (loaded.layer, loaded.site, loaded.summary) == (1, "resid_post", "avg")
    config = loaded.to_config()
    assert config["sae"]["fingerprint"] == fitted.sae_fingerprint
    assert config["reference"]["size"] == 3 and config["library_version"]
    assert "coverage" in config["report"] and "fvu" in config["report"]
    # Format 2: the rule, its recommended steering and the calibration norms survive.
    assert (loaded.rule, loaded.recommended, loaded.calibration) == (
        fitted.rule, fitted.recommended, fitted.calibration
    )
    assert loaded.rule == "output" and loaded.recommended["method"] == "add"
    assert {"latents", "weights", "delta", "delta_raw", "typical_activation"} <= set(loaded.stats)
    assert torch.equal(loaded.latent_weights()[0], fitted.latent_weights()[0])


def test_a_failed_save_keeps_the_previous_artifact(fitted, tmp_path, monkeypatch):
    import hf_sae_steer.scores.record as record

    folder = fitted.save_pretrained(tmp_path / "art")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def disk_full(tensors, path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(record, "save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        fitted.save_pretrained(folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # no temporary left


def test_format_1_artifacts_still_load(fitted, tmp_path):
    """An artifact written before rules existed: no rule, no recommendation, no calibration."""
    folder = fitted.save_pretrained(tmp_path / "old")
    config = json.loads((folder / "steering_config.json").read_text())
    for key in ("rule", "recommended", "calibration"):
        del config[key]
    config["format_version"] = 1
    (folder / "steering_config.json").write_text(json.dumps(config))
    old = FeatureScores.from_pretrained(folder)
    assert old.rule is None and old.recommended is None and old.calibration == {}
    assert torch.equal(old.scores, fitted.scores)


def test_model_card_front_matter(fitted, tmp_path):
    text = (fitted.save_pretrained(tmp_path / "art") / "README.md").read_text()
    _, front, body = text.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta["library_name"] == "hf_sae_steer"
    assert meta["base_model"] == "openai-community/gpt2"
    assert "sparse-autoencoder" in meta["tags"]
    assert "FeatureScores.from_pretrained" in body


def hf_cache_repo(cache, repo_id, source):
    """Lay ``source``'s files out as huggingface_hub's cache does: blobs, snapshots, refs."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True)
    (repo / "snapshots" / COMMIT).mkdir(parents=True)
    (repo / "refs").mkdir()
    for file in source.iterdir():
        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copy(file, blob)
        os.symlink(
            os.path.relpath(blob, repo / "snapshots" / COMMIT),
            repo / "snapshots" / COMMIT / file.name,
        )
    (repo / "refs" / "main").write_text(COMMIT)


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_load_from_offline_hf_cache(fitted, tmp_path, offline_cache):
    hf_cache_repo(offline_cache, "owner/medical-scores", fitted.save_pretrained(tmp_path / "art"))
    assert_same(fitted, FeatureScores.from_pretrained("owner/medical-scores"))
    assert_same(fitted, FeatureScores.from_pretrained("owner/medical-scores", revision=COMMIT))
    with pytest.raises(huggingface_hub.errors.LocalEntryNotFoundError):
        FeatureScores.from_pretrained("owner/not-cached")
    with pytest.raises(FileNotFoundError):
        FeatureScores.from_pretrained("./no/such/folder")


def test_push_to_hub_uploads_the_saved_folder(fitted, tmp_path, offline_cache, monkeypatch):
    calls = {}
    remote = tmp_path / "remote"

    def create_repo(self, repo_id, **kw):
        calls["create"] = (repo_id, kw)

    def upload_folder(self, *, repo_id, folder_path, **kw):
        calls["upload"] = (repo_id, kw)
        shutil.copytree(folder_path, remote)  # what the Hub would now hold
        return "commit-info"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    assert fitted.push_to_hub("owner/pushed", private=True) == "commit-info"
    assert calls["create"] == (
        "owner/pushed",
        {"private": True, "exist_ok": True, "repo_type": "model"},
    )
    assert calls["upload"][0] == "owner/pushed"
    # The three artifact files, not the folder's hidden manifest.
    assert calls["upload"][1]["allow_patterns"] == [
        "scores.safetensors", "steering_config.json", "README.md"]  # fmt: skip
    hf_cache_repo(offline_cache, "owner/pushed", remote)
    assert_same(fitted, FeatureScores.from_pretrained("owner/pushed"))


def test_loading_never_unpickles(fitted, tmp_path, monkeypatch):
    folder = fitted.save_pretrained(tmp_path / "art")

    def refuse(*a, **kw):
        raise AssertionError("unpickling")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr("pickle.load", refuse)
    monkeypatch.setattr("pickle.loads", refuse)
    assert_same(fitted, FeatureScores.from_pretrained(folder))


def write_reference_csv(path, cells):
    """The demo's published format: an unnamed index column and one score column."""
    lines = [",med.train_20.csv"] + [f"{i},{c}" for i, c in enumerate(cells)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_from_csv_reference_format(tmp_path):
    cells = ["0.25", "", "1.0", "0", "", "nan", "0.5"]
    scores = FeatureScores.from_csv(write_reference_csv(tmp_path / "s.csv", cells), layer=0)
    expected = torch.tensor([0.25, 0, 1.0, 0, 0, 0, 0.5])
    assert torch.equal(scores.scores, expected) and scores.scores.dtype == torch.float32
    assert not torch.isnan(scores.scores).any()
    assert scores.coverage == pytest.approx(4 / 7)  # empty / nan cells never fired
    assert scores.layer == 0 and scores.sae_fingerprint is None
    again = FeatureScores.from_pretrained(scores.save_pretrained(tmp_path / "art"))
    assert torch.equal(again.scores, expected) and again.coverage == scores.coverage
    assert again.report().fvu is None and math.isfinite(again.report().effective_latents)


def test_from_csv_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text(",a,b\n0,1,2\n")
    with pytest.raises(ValueError, match="one score column"):
        FeatureScores.from_csv(bad)
    bad.write_text(",s\n0,0.5\n2,0.1\n")
    with pytest.raises(ValueError, match="0..1"):
        FeatureScores.from_csv(bad)
    bad.write_text(",s\n0,high\n")
    with pytest.raises(ValueError, match="not a number"):
        FeatureScores.from_csv(bad)


def test_check_compatible(fitted, sae, tmp_path):
    check_compatible(fitted, sae)  # the SAE it was fitted on
    other = make_sae(tmp_path / "other", seed=1)
    with pytest.raises(ValueError, match="allow_score_mismatch=True"):
        check_compatible(fitted, other)
    with pytest.warns(UserWarning, match="fingerprint"):
        check_compatible(fitted, other, allow_mismatch=True)
    wider = make_sae(tmp_path / "wider", n=N + 8)
    with pytest.raises(ValueError, match="d_sae=48"):
        check_compatible(fitted, wider, allow_mismatch=True)
    imported = FeatureScores(scores=torch.zeros(N), coverage=0.0)  # e.g. from CSV
    check_compatible(imported, other)


@pytest.mark.parametrize(
    "model_id, sae_spec, shown_model, shown_sae",
    [
        ("{tmp}/models/my-model", "{tmp}/saes/layer-9/", "my-model", "layer-9"),
        ("~/models/my-model", "./saes/layer-9", "my-model", "layer-9"),
        ("openai-community/gpt2", "hf://owner/repo/layer_9/width_16k",
         "openai-community/gpt2", "hf://owner/repo/layer_9/width_16k"),
        ("gpt2", "saelens:gpt2-small-res-jb/blocks.8.hook_resid_pre",
         "gpt2", "saelens:gpt2-small-res-jb/blocks.8.hook_resid_pre"),
        ("{tmp}/models/my-model", "https://example.org/sae/9.pt", "my-model",
         "https://example.org/sae/9.pt"),
    ],
)  # fmt: skip
def test_saved_artifacts_hold_no_local_paths(fitted, tmp_path, model_id, sae_spec, shown_model,
                                             shown_sae):  # fmt: skip
    # issue 23: a card and a config name a path by its last component, a Hub id as it is.
    scores = copy.copy(fitted)
    scores.model_id = model_id.format(tmp=tmp_path)
    scores.sae_spec = sae_spec.format(tmp=tmp_path)
    scores.embedder = str(tmp_path / "embedders" / "mini-lm")
    folder = scores.save_pretrained(tmp_path / "art")
    config = json.loads((folder / "steering_config.json").read_text())
    card = (folder / "README.md").read_text()
    for text in (card, json.dumps(config)):
        assert str(tmp_path) not in text and "~/" not in text and "./" not in text
    assert config["model_id"] == shown_model and config["sae"]["spec"] == shown_sae
    assert config["embedder"] == "mini-lm"
    assert f"| model | {shown_model} |" in card and f"{shown_sae} (fingerprint" in card
    loadable = ":" in shown_sae  # a spec with a scheme loads anywhere; a folder's name does not
    snippet = json.dumps(shown_sae if loadable else "<the SAE these scores fit>")
    assert f"sae = load_sae({snippet})" in card
    back = FeatureScores.from_pretrained(folder)
    assert (back.model_id, back.sae_spec) == (shown_model, shown_sae)
    assert back.to_config() == {k: v for k, v in config.items() if k != "scores_sha256"}


def test_the_effect_in_words_is_saved_loaded_and_printed(fitted, tmp_path):
    assert fitted.effect is not None and fitted.effect.next_token is not None
    folder = fitted.save_pretrained(tmp_path / "art")
    config = json.loads((folder / "steering_config.json").read_text())
    assert config["effect"] == json.loads(json.dumps(fitted.effect.to_dict()))
    assert "effect" not in config["report"]  # beside the report, not in it
    loaded = FeatureScores.from_pretrained(folder)
    assert loaded.effect == fitted.effect
    text = str(loaded.report())
    assert "What the recommended steering does, in words:" in text
    assert fitted.effect.next_token.format() in text
    assert "effect" not in loaded.report().to_dict()


def test_an_artifact_from_before_the_effect_writes_back_byte_for_byte(fitted, tmp_path):
    """Without an 'effect' (every artifact before it existed), loading and saving again gives
    the same files, byte for byte: no key appears."""
    folder = fitted.save_pretrained(tmp_path / "old")
    path = folder / "steering_config.json"
    config = json.loads(path.read_text())
    del config["effect"]
    path.write_text(json.dumps(config, indent=2, allow_nan=False) + "\n")
    before = {p.name: p.read_bytes() for p in folder.iterdir() if not p.name.startswith(".")}
    (folder / "README.md").unlink()  # the card is written from the config: compare it too
    old = FeatureScores.from_pretrained(folder)
    assert old.effect is None and "What the recommended steering" not in str(old.report())
    again = old.save_pretrained(tmp_path / "again")
    after = {p.name: p.read_bytes() for p in again.iterdir() if not p.name.startswith(".")}
    assert after.keys() == before.keys() - {"README.md"} | {"README.md"}
    assert after["steering_config.json"] == before["steering_config.json"]
    assert after["scores.safetensors"] == before["scores.safetensors"]
