"""``load_sae`` dispatch: local layouts, hf:// through a fake offline HF cache, saelens:."""

from __future__ import annotations

import ast
import hashlib
import os
import sys
import types
from pathlib import Path

import pytest
import torch
from sae_factories import (
    D_IN,
    gemmascope_params,
    openai_state,
    saelens_cfg,
    saelens_state,
    write_gemmascope,
    write_openai,
    write_saelens,
)

import hf_sae_steer
from hf_sae_steer.sae import SAE, load_sae

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def layouts(tmp_path: Path) -> dict[str, Path]:
    """One SAE per local layout."""
    return {
        "pt": write_openai(tmp_path / "o" / "sae.pt", openai_state()),
        "saelens": write_saelens(tmp_path / "s", saelens_cfg("topk"), saelens_state("topk")),
        "gs_npz": write_gemmascope(tmp_path / "g" / "params.npz", gemmascope_params()),
        "gs_st": write_gemmascope(tmp_path / "h" / "params.safetensors", gemmascope_params()),
    }


def test_local_layouts(layouts: dict[str, Path]) -> None:
    specs = [
        layouts["pt"],
        layouts["saelens"],
        layouts["saelens"] / "cfg.json",
        layouts["saelens"] / "sae_weights.safetensors",
        layouts["gs_npz"],
        layouts["gs_npz"].parent,
        layouts["gs_st"],
        str(layouts["gs_st"].parent),
    ]
    kinds = ["topk", "topk", "topk", "topk", "jumprelu", "jumprelu", "jumprelu", "jumprelu"]
    for spec, kind in zip(specs, kinds, strict=True):
        sae = load_sae(spec)
        assert isinstance(sae, SAE) and sae.cfg.activation == kind
        assert sae.cfg.spec == os.fspath(spec)


def test_device_and_dtype(layouts: dict[str, Path]) -> None:
    ref = load_sae(layouts["saelens"])
    sae = load_sae(layouts["saelens"], device="cpu", dtype=torch.bfloat16)
    assert sae.dtype == torch.bfloat16 and sae.device.type == "cpu"
    assert all(p.dtype == torch.bfloat16 for p in sae.parameters())
    # Inputs whose k-th and next pre-activations are apart: where they nearly tie (13% of
    # random inputs), bfloat16 rounding may swap which latent TopK keeps, a different output.
    x = torch.randn(64, D_IN, generator=torch.Generator().manual_seed(0))
    top = ref.encode_pre(ref.preprocess(x)[0]).topk(ref.cfg.k + 1, dim=-1).values
    x = x[(top[:, -2] - top[:, -1]) > 0.05][:4]
    assert len(x) == 4
    out = sae(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref(x), atol=0.1, rtol=0.05)
    assert load_sae(layouts["gs_npz"], dtype=torch.float64).threshold.dtype == torch.float64


def test_errors(tmp_path: Path, layouts: dict[str, Path]) -> None:
    with pytest.raises(FileNotFoundError, match="missing_sae"):
        load_sae(tmp_path / "missing_sae")
    with pytest.raises(ValueError, match=r"scheme 's3'.*openai:<family>.*hf://.*saelens:"):
        load_sae("s3://bucket/sae.pt")
    with pytest.raises(ValueError, match=r"\.pt checkpoint"):
        load_sae("az://openaipublic/sparse-autoencoder/cfg.json")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="No SAE in folder"):
        load_sae(empty)
    both = write_gemmascope(layouts["saelens"] / "params.npz", gemmascope_params())
    with pytest.raises(ValueError, match="both a SAELens SAE"):
        load_sae(both.parent)
    odd = tmp_path / "sae.txt"
    odd.write_text("x")
    with pytest.raises(ValueError, match="Cannot tell the SAE format"):
        load_sae(odd)


# -- hf:// through a real huggingface_hub cache, offline -----------------------------------
def add_to_hub_cache(hub: Path, repo_id: str, files: dict[str, Path]) -> None:
    """Lay files out like huggingface_hub does: blobs by hash, snapshot symlinks, refs/main."""
    repo = hub / f"models--{repo_id.replace('/', '--')}"
    for rel, src in files.items():
        data = src.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / COMMIT / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layouts) -> Path:
    from huggingface_hub import constants

    hub = tmp_path / "hub"
    # huggingface_hub reads these variables at import time, so set the constants as well.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    s = layouts["saelens"]
    add_to_hub_cache(
        hub,
        "owner/repo",
        {
            "saes/blocks.2.hook_resid_pre/cfg.json": s / "cfg.json",
            "saes/blocks.2.hook_resid_pre/sae_weights.safetensors": s / "sae_weights.safetensors",
            "cfg.json": s / "cfg.json",
            "sae_weights.safetensors": s / "sae_weights.safetensors",
            "openai/resid_post_mlp_v5_32k/autoencoders/4.pt": layouts["pt"],
        },
    )
    rel = "layer_3/width_16k/average_l0_10/params.npz"
    add_to_hub_cache(hub, "google/gemma-scope-2b-pt-mlp", {rel: layouts["gs_npz"]})
    return hub


def test_hub_saelens_folder(offline_hub: Path, layouts) -> None:
    ref = load_sae(layouts["saelens"])
    x = torch.randn(3, D_IN)
    for spec in (
        "hf://owner/repo/saes/blocks.2.hook_resid_pre",
        "hf://owner/repo/saes/blocks.2.hook_resid_pre/",
        "hf://owner/repo/saes/blocks.2.hook_resid_pre/cfg.json",
        "hf://owner/repo",
    ):
        sae = load_sae(spec)
        assert sae.cfg.spec == spec and (sae.cfg.layer, sae.cfg.site) == (2, "resid_pre")
        assert torch.equal(sae(x), ref(x))
    assert load_sae("hf://owner/repo/saes/blocks.2.hook_resid_pre", revision=COMMIT).d_in == D_IN


def test_hub_single_files(offline_hub: Path) -> None:
    sae = load_sae("hf://owner/repo/openai/resid_post_mlp_v5_32k/autoencoders/4.pt")
    assert (sae.cfg.layer, sae.cfg.site, sae.k) == (4, "resid_post", 8)
    sae = load_sae("hf://google/gemma-scope-2b-pt-mlp/layer_3/width_16k/average_l0_10/params.npz")
    assert (sae.cfg.layer, sae.cfg.site, sae.cfg.activation) == (3, "mlp_out", "jumprelu")
    sae = load_sae("hf://google/gemma-scope-2b-pt-mlp/layer_3/width_16k/average_l0_10")
    assert (sae.cfg.layer, sae.cfg.site) == (3, "mlp_out")


def test_hub_missing(offline_hub: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing/here"):
        load_sae("hf://owner/repo/nothing/here")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_sae("hf://owner/repo/missing.pt")
    with pytest.raises(FileNotFoundError):
        load_sae("hf://owner/not-cached/sae")
    with pytest.raises(ValueError, match="hf://<owner>/<repo>"):
        load_sae("hf://just-owner")


# -- saelens: (optional package) -------------------------------------------------------------
def test_saelens_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sae_lens", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"pip install 'hf_sae_steer\[saelens\]'"):
        load_sae("saelens:gpt2-small-res-jb/blocks.8.hook_resid_pre")


@pytest.mark.parametrize("old_api", [False, True])
def test_saelens_conversion(monkeypatch: pytest.MonkeyPatch, old_api: bool) -> None:
    cfg, st = saelens_cfg("gated"), saelens_state("gated")
    calls: list[tuple] = []

    class FakeLensSAE(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cfg = types.SimpleNamespace(to_dict=lambda: cfg)
            for name, value in st.items():
                self.register_buffer(name, value)

        @classmethod
        def from_pretrained(cls, release: str, sae_id: str, device: str = "cpu"):
            calls.append((release, sae_id, device))
            sae = cls()
            return (sae, cfg, None) if old_api else sae

    monkeypatch.setitem(sys.modules, "sae_lens", types.SimpleNamespace(SAE=FakeLensSAE))
    sae = load_sae("saelens:gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71")
    assert calls == [("gemma-scope-2b-pt-res", "layer_20/width_16k/average_l0_71", "cpu")]
    assert sae.cfg.activation == "gated" and torch.equal(sae.b_enc, st["b_gate"])
    with pytest.raises(ValueError, match="saelens:<release>/<sae_id>"):
        load_sae("saelens:no-id")


def test_core_never_imports_sae_lens_at_module_level() -> None:
    root = Path(hf_sae_steer.__file__).parent
    for path in root.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:  # module level only
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n.split(".")[0] == "sae_lens" for n in names), path


# -- files that must not load (issue 16): non-finite weights, configs that lie, wrong types ---
def with_value(tensor, value):
    tensor = tensor.clone()
    tensor.view(-1)[3] = value
    return tensor


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_naming_file_and_tensor(tmp_path: Path, value) -> None:
    state = saelens_state("jumprelu")
    state["W_dec"] = with_value(state["W_dec"], value)
    folder = write_saelens(tmp_path / "s", saelens_cfg("jumprelu"), state)
    with pytest.raises(ValueError, match=rf"{folder}.*W_dec.*not finite"):
        load_sae(folder)
    raw = openai_state()
    raw["latent_bias"] = with_value(raw["latent_bias"], value)
    pt = write_openai(tmp_path / "o.pt", raw)
    with pytest.raises(ValueError, match=rf"{pt}.*latent_bias.*not finite"):
        load_sae(pt)
    for name in ("params.npz", "params.safetensors"):
        params = gemmascope_params()
        params["threshold"][5] = value
        path = write_gemmascope(tmp_path / name.split(".")[1] / name, params)
        with pytest.raises(ValueError, match=rf"{path}.*threshold.*not finite"):
            load_sae(path)


def test_a_config_larger_than_its_weights_is_refused_before_allocating(tmp_path: Path) -> None:
    # d_in x d_sae of this config is 2**46 floats (256 TiB): allocating it first fails with a
    # RuntimeError from the allocator, checking the file's shapes first gives a clear error.
    cfg = saelens_cfg("standard", n=2**40)
    folder = write_saelens(tmp_path / "s", cfg, saelens_state("standard"))
    with pytest.raises(ValueError, match=rf"{folder}.*W_enc has shape \(32, 128\), expected"):
        load_sae(folder)
    cfg = saelens_cfg("standard", rescale_acts_by_decoder_norm=True, d=16)  # folds before building
    folder = write_saelens(tmp_path / "r", cfg, saelens_state("standard"))
    with pytest.raises(ValueError, match=rf"{folder}.*W_enc has shape \(32, 128\), expected"):
        load_sae(folder)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("d_in", 32.9, "d_in must be a positive integer, got 32.9"),
        ("d_in", -32, "d_in must be a positive integer, got -32"),
        ("d_sae", "128", "d_sae must be a positive integer, got '128'"),
        ("d_sae", True, "d_sae must be a positive integer, got True"),
        ("d_sae", 0, "d_sae must be a positive integer, got 0"),
    ],
)
def test_config_types_are_checked(tmp_path: Path, field, value, message) -> None:
    folder = write_saelens(tmp_path / "s", saelens_cfg("standard", **{field: value}),
                           saelens_state("standard"))  # fmt: skip
    with pytest.raises(ValueError, match=rf"{folder}.*cfg.json.*{message}"):
        load_sae(folder)


def test_integer_weights_are_refused(tmp_path: Path) -> None:
    state = saelens_state("standard")
    state["b_dec"] = torch.arange(D_IN)
    folder = write_saelens(tmp_path / "s", saelens_cfg("standard"), state)
    with pytest.raises(ValueError, match=rf"{folder}.*b_dec is int64, not floating point"):
        load_sae(folder)
    raw = openai_state()
    raw["pre_bias"] = torch.ones(D_IN, dtype=torch.int32)
    pt = write_openai(tmp_path / "o.pt", raw)
    with pytest.raises(ValueError, match=rf"{pt}.*pre_bias is int32, not floating point"):
        load_sae(pt)
    params = gemmascope_params()
    params["b_enc"] = params["b_enc"].astype("int16")
    path = write_gemmascope(tmp_path / "g" / "params.npz", params)
    with pytest.raises(ValueError, match=rf"{path}.*b_enc is int16, not floating point"):
        load_sae(path)
