"""OpenAI .pt checkpoints: the maths of docs/method.md §1, the name parser, the az:// cache."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from sae_factories import D_IN, D_SAE, openai_state, write_openai

from hf_sae_steer.sae import load_sae
from hf_sae_steer.sae.openai import openai_url, parse_openai_name

EXECUTED: list[str] = []


def _mark_executed() -> None:
    EXECUTED.append("pickled code ran")


class Evil:
    """Pickles as a call to ``_mark_executed``: a stand-in for arbitrary code."""

    def __reduce__(self):
        return (_mark_executed, ())


# -- docs/method.md §1, written out plainly -----------------------------------------------------
def ref_encode(state: dict, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple]:
    """Returns (pre, z, (mu, std)); LN only for TopK checkpoints."""
    topk = state.get("activation") == "TopK"
    mu = std = None
    if topk:
        mu = x.mean(dim=-1, keepdim=True)
        x = x - mu
        std = x.std(dim=-1, keepdim=True)  # unbiased
        x = x / (std + 1e-5)
    pre = (x - state["pre_bias"]) @ state["encoder.weight"].T + state["latent_bias"]
    if topk:
        k = state["activation_state_dict"]["k"]
        top = torch.topk(pre, k, dim=-1)
        z = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
    else:
        z = torch.relu(pre)
    return pre, z, (mu, std)


def ref_decode(state: dict, z: torch.Tensor, mu, std) -> torch.Tensor:
    out = z @ state["decoder.weight"].T + state["pre_bias"]
    return out * std + mu if mu is not None else out


@pytest.mark.parametrize(("k", "key"), [(8, True), (None, True), (None, False)])
def test_matches_method_section_1(tmp_path: Path, k: int | None, key: bool) -> None:
    """TopK (v5), ReLU named in the file, ReLU by the key's absence (v1/v4)."""
    state = openai_state(k=k, activation=key)
    sae = load_sae(write_openai(tmp_path / "sae.pt", state))
    assert (sae.d_in, sae.d_sae, sae.k) == (D_IN, D_SAE, k)
    assert sae.cfg.normalize_activations == ("layer_norm" if k else "none")
    assert sae.cfg.site is None and sae.cfg.layer is None
    x = torch.randn(2, 5, D_IN) * 3 + 1
    pre, z, (mu, std) = ref_encode(state, x)
    xp, info = sae.preprocess(x)
    torch.testing.assert_close(sae.encode_pre(xp), pre, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sae.encode(x), z, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        sae.decode(z, info), ref_decode(state, z, mu, std), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(sae(x), ref_decode(state, z, mu, std), atol=1e-5, rtol=1e-5)
    if k:
        assert int((sae.encode(x) != 0).sum(-1).max()) <= k


@pytest.mark.parametrize(
    ("location", "suffix", "site", "hook"),
    [
        ("resid_post_mlp", "_v5_32k", "resid_post", "blocks.3.hook_resid_post"),
        ("resid_post_attn", "_v5_128k", "resid_mid", "blocks.3.hook_resid_mid"),
        ("resid_delta_attn", "_v5_32k", "attn_out", "blocks.3.hook_attn_out"),
        ("resid_delta_mlp", "_v4", "mlp_out", "blocks.3.hook_mlp_out"),
        ("mlp_post_act", "", None, "blocks.3.mlp.hook_post"),
    ],
)
def test_site_from_published_layout(tmp_path, location, suffix, site, hook) -> None:
    path = tmp_path / f"{location}{suffix}" / "autoencoders" / "3.pt"
    sae = load_sae(write_openai(path, openai_state()))
    assert (sae.cfg.layer, sae.cfg.site, sae.cfg.hook_name) == (3, site, hook)
    assert sae.cfg.model_name == "gpt2"
    if site is None:
        assert "cannot be hooked" in sae.cfg.extra["note"]


def test_refuses_pickled_code(tmp_path: Path) -> None:
    state = openai_state()
    state["payload"] = Evil()
    path = write_openai(tmp_path / "evil.pt", state)
    with pytest.raises(ValueError, match=r"(?s)Refused.*evil\.pt.*pickled code.*weights_only=True"):
        load_sae(path)
    assert EXECUTED == []


@pytest.mark.parametrize("how", ["truncated", "garbage", "empty"])
def test_corrupt_checkpoint(tmp_path: Path, how: str) -> None:
    good = write_openai(tmp_path / "good.pt", openai_state()).read_bytes()
    data = {"truncated": good[: len(good) // 2], "garbage": b"not a checkpoint", "empty": b""}
    path = tmp_path / "bad.pt"
    path.write_bytes(data[how])
    with pytest.raises(ValueError, match=r"bad\.pt is corrupt"):
        load_sae(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_sae(tmp_path / "nope.pt")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.update({"decoder.weight": torch.zeros(D_IN + 1, D_SAE)}), "decoder.weight"),
        (lambda s: s.update({"pre_bias": torch.zeros(3)}), "pre_bias"),
        (lambda s: s.pop("latent_bias"), "lacks latent_bias"),
        (lambda s: s.update({"activation": "Identity"}), "unsupported OpenAI activation"),
        (lambda s: s["activation_state_dict"].update(postact_fn="Identity"), "postact_fn"),
        (lambda s: s["activation_state_dict"].update(k=0), "k=0"),
        (lambda s: s["activation_state_dict"].update(k=D_SAE + 1), f"k={D_SAE + 1}"),
        (lambda s: s["activation_state_dict"].update(k="8"), "integer k"),
    ],
)
def test_bad_state(tmp_path: Path, edit, message: str) -> None:
    state = openai_state()
    edit(state)
    with pytest.raises(ValueError, match=message):
        load_sae(write_openai(tmp_path / "sae.pt", state))


def test_not_a_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(ValueError, match="not an OpenAI SAE state dict"):
        load_sae(path)


# -- names and the az:// cache -------------------------------------------------------------
def test_name_parser() -> None:
    assert parse_openai_name("openai:v5_32k/resid_post_mlp/9") == ("v5_32k", "resid_post_mlp", 9)
    assert openai_url("v5_32k", "resid_post_mlp", 9) == (
        "az://openaipublic/sparse-autoencoder/gpt2-small/resid_post_mlp_v5_32k/autoencoders/9.pt"
    )
    assert openai_url("v1", "mlp_post_act", 0).endswith("gpt2-small/mlp_post_act/autoencoders/0.pt")
    assert "/resid_delta_mlp_v4/" in openai_url("v4", "resid_delta_mlp", 11)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("openai:v6/resid_post_mlp/0", "v1, v4, v5_32k, v5_128k"),
        ("openai:v1/resid_post_mlp/0", "mlp_post_act, resid_delta_mlp"),
        ("openai:v5_32k/mlp_post_act/0", "resid_delta_attn, resid_delta_mlp, resid_post_attn"),
        ("openai:v5_32k/resid_post_mlp/12", "layers 0..11"),
        ("openai:v5_32k/resid_post_mlp", "openai:<family>/<location>/<layer>"),
        ("openai:v5_32k/resid_post_mlp/x", "openai:<family>/<location>/<layer>"),
    ],
)
def test_bad_names(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_sae(name)


@pytest.fixture
def fake_blob_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Stub only blobfile's network copy: serve URLs from a local folder, count the calls."""
    import blobfile

    remote = tmp_path / "remote"
    calls: list[str] = []

    def fake_copy(src: str, dst: str, overwrite: bool = False) -> None:
        calls.append(src)
        rel = src.split("://", 1)[1].split("/", 1)[1]  # drop the account/host
        shutil.copyfile(remote / rel, dst)

    class FakeContext:
        def __init__(self, **options):
            assert options.get("retry_limit") is not None  # never retry forever
            self.copy = fake_copy

    monkeypatch.setattr(blobfile, "create_context", FakeContext)
    monkeypatch.setenv("HF_SAE_STEER_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_SAE_STEER_OFFLINE", raising=False)
    return remote, calls


def test_az_download_is_cached(tmp_path: Path, fake_blob_store) -> None:
    remote, calls = fake_blob_store
    rel = "sparse-autoencoder/gpt2-small/resid_post_mlp_v5_32k/autoencoders/9.pt"
    state = openai_state(seed=3)
    write_openai(remote / rel, state)
    first = load_sae("openai:v5_32k/resid_post_mlp/9")
    second = load_sae("openai:v5_32k/resid_post_mlp/9")
    assert calls == [f"az://openaipublic/{rel}"]
    cached = tmp_path / "cache" / "az" / "openaipublic" / rel
    assert cached.is_file() and not [p for p in cached.parent.iterdir() if p != cached]
    for sae in (first, second):
        assert sae.cfg.spec == "openai:v5_32k/resid_post_mlp/9"
        assert (sae.cfg.layer, sae.cfg.site, sae.k) == (9, "resid_post", 8)
        assert sae.cfg.extra["family"] == "v5_32k"
        torch.testing.assert_close(sae.b_dec, state["pre_bias"], rtol=0, atol=0)


def test_https_blob_url_and_cache_dir(tmp_path: Path, fake_blob_store) -> None:
    remote, calls = fake_blob_store
    rel = "sparse-autoencoder/gpt2-small/resid_delta_attn_v5_128k/autoencoders/4.pt"
    write_openai(remote / rel, openai_state())
    url = f"https://openaipublic.blob.core.windows.net/{rel}"
    own = tmp_path / "own_cache"
    for _ in range(2):
        sae = load_sae(url, cache_dir=own)
    assert calls == [url]
    assert (own / "https" / "openaipublic.blob.core.windows.net" / rel).is_file()
    assert (sae.cfg.spec, sae.cfg.layer, sae.cfg.site) == (url, 4, "attn_out")


def test_failed_download_leaves_no_partial_file(tmp_path: Path, fake_blob_store) -> None:
    remote, calls = fake_blob_store
    url = "az://openaipublic/sparse-autoencoder/gpt2-small/resid_post_mlp_v5_32k/autoencoders/1.pt"
    with pytest.raises(OSError, match="Could not download"):  # not in the fake store
        load_sae(url)
    folder = (
        tmp_path / "cache" / "az" / "openaipublic" / os.path.dirname(url.split("openaipublic/")[1])
    )
    assert not folder.exists() or list(folder.iterdir()) == []
    write_openai(remote / url.split("openaipublic/")[1], openai_state())
    assert load_sae(url).cfg.layer == 1
    assert len(calls) == 2


def test_offline_never_downloads(tmp_path: Path, fake_blob_store, monkeypatch) -> None:
    remote, calls = fake_blob_store
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="not in the cache .* downloads are off"):
        load_sae("openai:v5_32k/resid_post_mlp/2")
    assert calls == []
