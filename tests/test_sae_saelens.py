"""SAELens folders: SAELens's own equations, config generations, save/load round trips."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from sae_factories import D_IN, D_SAE, saelens_cfg, saelens_state, write_saelens
from safetensors.torch import load_file

from hf_sae_steer.sae import load_sae
from hf_sae_steer.sites.names import parse_hook_name

ARCHS = ["standard", "topk", "jumprelu", "gated"]


# -- SAELens's documented forward pass, written out plainly --------------------------------
def ref_forward(cfg: dict, st: dict, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(feature_acts, sae_out) as SAELens computes them (plus TransformerLens centring)."""
    meta = cfg.get("metadata", {})
    centre = meta.get("model_from_pretrained_kwargs", {}).get("center_writing_weights", False)
    mean = x.mean(-1, keepdim=True) if centre else torch.zeros(())
    x = x - mean
    norm = cfg["normalize_activations"]
    if norm == "constant_norm_rescale":
        coef = math.sqrt(x.shape[-1]) / x.norm(dim=-1, keepdim=True)
        x = x * coef
    elif norm == "layer_norm":
        mu = x.mean(-1, keepdim=True)
        x = x - mu
        std = x.std(-1, keepdim=True)
        x = x / (std + 1e-5)
    sae_in = x - st["b_dec"] * cfg["apply_b_dec_to_input"]
    arch = cfg["architecture"]
    if arch == "gated":
        gate = (sae_in @ st["W_enc"] + st["b_gate"]) > 0
        mag = torch.relu(sae_in @ (st["W_enc"] * st["r_mag"].exp()) + st["b_mag"])
        acts = gate * mag
    else:
        hidden = sae_in @ st["W_enc"] + st["b_enc"]
        if arch == "standard":
            acts = torch.relu(hidden)
        elif arch == "jumprelu":
            acts = torch.relu(hidden) * (hidden > st["threshold"])
        else:
            top = hidden.topk(cfg["k"], dim=-1)
            acts = torch.zeros_like(hidden).scatter(-1, top.indices, torch.relu(top.values))
    out = acts @ st["W_dec"] + st["b_dec"]
    if norm == "constant_norm_rescale":
        out = out / coef
    elif norm == "layer_norm":
        out = out * std + mu
    return acts, out + mean


def check_matches(sae, cfg: dict, st: dict, atol: float = 1e-5) -> None:
    x = torch.randn(3, 4, D_IN) * 2 + 0.5
    acts, out = ref_forward(cfg, st, x)
    torch.testing.assert_close(sae.encode(x), acts, atol=atol, rtol=1e-5)
    torch.testing.assert_close(sae(x), out, atol=atol, rtol=1e-5)


@pytest.mark.parametrize("norm", ["none", "layer_norm", "constant_norm_rescale"])
@pytest.mark.parametrize("arch", ARCHS)
def test_architectures_match_saelens(tmp_path: Path, arch: str, norm: str) -> None:
    cfg = saelens_cfg(arch, normalize_activations=norm, apply_b_dec_to_input=arch != "jumprelu")
    st = saelens_state(arch)
    sae = load_sae(write_saelens(tmp_path / "sae", cfg, st))
    assert sae.cfg.activation == {"standard": "relu"}.get(arch, arch)
    assert (sae.cfg.layer, sae.cfg.site, sae.cfg.model_name) == (2, "resid_pre", "tiny-model")
    check_matches(sae, cfg, st)


def test_center_writing_weights(tmp_path: Path) -> None:
    meta = {
        "hook_name": "blocks.0.hook_resid_post",
        "model_from_pretrained_kwargs": {"center_writing_weights": True},
    }
    cfg, st = saelens_cfg("standard", metadata=meta), saelens_state("standard")
    sae = load_sae(write_saelens(tmp_path / "sae", cfg, st))
    assert sae.cfg.center_input
    check_matches(sae, cfg, st)


def test_pre_6_config(tmp_path: Path) -> None:
    """Old layout: top-level hook_point/model keys, TopK through activation_fn_kwargs."""
    cfg = {
        "d_in": D_IN,
        "d_sae": D_SAE,
        "hook_point": "blocks.5.hook_mlp_out",
        "hook_point_layer": 5,
        "model_name": "gpt2-small",
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": 16},
        "model_from_pretrained_kwargs": {"center_writing_weights": True},
        "normalize_activations": False,
    }
    sae = load_sae(write_saelens(tmp_path / "old", cfg, saelens_state("topk")))
    c = sae.cfg
    assert (c.activation, c.k, c.layer, c.site, c.model_name) == (
        "topk",
        16,
        5,
        "mlp_out",
        "gpt2-small",
    )
    assert c.center_input and c.apply_b_dec_to_input and c.normalize_activations == "none"


@pytest.mark.parametrize(
    ("hook", "expected"),
    [
        ("blocks.8.hook_resid_pre", (8, "resid_pre")),
        ("blocks.0.hook_resid_mid", (0, "resid_mid")),
        ("blocks.11.hook_resid_post", (11, "resid_post")),
        ("blocks.3.hook_attn_out", (3, "attn_out")),
        ("blocks.3.hook_mlp_out", (3, "mlp_out")),
        ("blocks.3.attn.hook_z", (3, None)),
        ("hook_embed", (None, None)),
        (None, (None, None)),
    ],
)
def test_hook_names(hook, expected) -> None:
    assert parse_hook_name(hook) == expected


def test_folded_options(tmp_path: Path) -> None:
    """scaling_factor, log_threshold and rescale_acts_by_decoder_norm end up in the weights."""
    st = saelens_state("jumprelu")
    scale = torch.rand(D_SAE) + 0.5
    st["scaling_factor"] = scale
    st["log_threshold"] = st.pop("threshold").log()
    cfg = saelens_cfg("jumprelu", finetuning_scaling_factor=True)
    sae = load_sae(write_saelens(tmp_path / "a", cfg, st))
    ref = {**st, "threshold": st["log_threshold"].exp(), "W_dec": st["W_dec"] * scale[:, None]}
    check_matches(sae, cfg, ref)

    st = saelens_state("standard")
    st["scaling_factor"] = torch.ones(D_SAE)
    sae = load_sae(write_saelens(tmp_path / "b", saelens_cfg("standard"), st))
    check_matches(sae, saelens_cfg("standard"), st)

    # TopK with rescale_acts_by_decoder_norm: SAELens scales pre by ||W_dec||, divides it out.
    st = saelens_state("topk")
    st["W_dec"] = st["W_dec"] * (torch.rand(D_SAE, 1) * 3 + 0.2)
    cfg = saelens_cfg("topk", rescale_acts_by_decoder_norm=True)
    sae = load_sae(write_saelens(tmp_path / "c", cfg, st))
    norms = st["W_dec"].norm(dim=-1)
    x = torch.randn(5, D_IN)
    hidden = ((x - st["b_dec"]) @ st["W_enc"] + st["b_enc"]) * norms
    top = hidden.topk(8, dim=-1)
    acts = torch.zeros_like(hidden).scatter(-1, top.indices, torch.relu(top.values))
    torch.testing.assert_close(sae.encode(x), acts, atol=1e-5, rtol=1e-5)
    out = (acts / norms) @ st["W_dec"] + st["b_dec"]
    torch.testing.assert_close(sae(x), out, atol=1e-5, rtol=1e-5)


def test_expected_average_only_in_reads_as_none(tmp_path: Path) -> None:
    cfg = saelens_cfg("standard", normalize_activations="expected_average_only_in")
    sae = load_sae(write_saelens(tmp_path / "sae", cfg, saelens_state("standard")))
    assert sae.cfg.normalize_activations == "none" and sae.cfg.extra["notes"]


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"normalize_activations": "whiten"}, "normalize_activations 'whiten'"),
        ({"architecture": "transcoder"}, "architecture 'transcoder'"),
        ({"architecture": "standard", "activation_fn": "tanh-relu"}, "activation_fn"),
        ({"k": D_SAE + 1}, f"k={D_SAE + 1}"),
        ({"k": 0}, "k=0"),
        ({"k": None}, "integer k"),
        ({"d_in": D_IN + 1}, "W_enc has shape"),
    ],
)
def test_bad_config(tmp_path: Path, over: dict, message: str) -> None:
    cfg = {**saelens_cfg("topk"), **over}
    folder = write_saelens(tmp_path / "sae", cfg, saelens_state("topk"))
    with pytest.raises(ValueError, match=message) as err:
        load_sae(folder)
    assert str(folder) in str(err.value)


def test_missing_tensor(tmp_path: Path) -> None:
    st = saelens_state("jumprelu")
    del st["threshold"]
    with pytest.raises(ValueError, match="lacks threshold"):
        load_sae(write_saelens(tmp_path / "sae", saelens_cfg("jumprelu"), st))


@pytest.mark.parametrize("broken", ["cfg.json", "sae_weights.safetensors"])
def test_corrupt_files(tmp_path: Path, broken: str) -> None:
    folder = write_saelens(tmp_path / "sae", saelens_cfg("standard"), saelens_state("standard"))
    data = (folder / broken).read_bytes()
    (folder / broken).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"{broken} is corrupt"):
        load_sae(folder)


def test_missing_weights(tmp_path: Path) -> None:
    folder = write_saelens(tmp_path / "sae", saelens_cfg("standard"), saelens_state("standard"))
    (folder / "sae_weights.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="sae_weights.safetensors"):
        load_sae(folder)


# -- writing -------------------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["none", "layer_norm"])
@pytest.mark.parametrize("arch", ARCHS)
def test_save_pretrained_round_trip(tmp_path: Path, arch: str, norm: str) -> None:
    meta = {
        "hook_name": "blocks.4.hook_attn_out",
        "model_name": "m",
        "model_from_pretrained_kwargs": {"center_writing_weights": True},
    }
    cfg = saelens_cfg(arch, normalize_activations=norm, metadata=meta)
    sae = load_sae(write_saelens(tmp_path / "in", cfg, saelens_state(arch, seed=7)))
    out = sae.save_pretrained(tmp_path / "out")
    again = load_sae(out)
    for name, tensor in sae.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[name]), name
    for field in (
        "d_in",
        "d_sae",
        "activation",
        "k",
        "normalize_activations",
        "apply_b_dec_to_input",
    ):
        assert getattr(again.cfg, field) == getattr(sae.cfg, field), field
    for field in ("center_input", "layer", "site", "hook_name", "model_name"):
        assert getattr(again.cfg, field) == getattr(sae.cfg, field), field
    x = torch.randn(2, 3, D_IN)
    assert torch.equal(again(x), sae(x))
    written = json.loads((out / "cfg.json").read_text())
    arch_name = written["architecture"]
    assert arch_name == arch and written["metadata"]["hook_name"] == "blocks.4.hook_attn_out"
    assert written["metadata"]["model_from_pretrained_kwargs"] == {"center_writing_weights": True}
    keys = set(load_file(str(out / "sae_weights.safetensors")))
    assert ("b_gate" in keys) == (arch == "gated") and ("b_enc" in keys) == (arch != "gated")


def test_hook_name_built_from_layer_and_site(tmp_path: Path) -> None:
    sae = load_sae(
        write_saelens(tmp_path / "in", saelens_cfg("standard"), saelens_state("standard"))
    )
    sae.cfg.layer, sae.cfg.site = 6, "resid_mid"  # the hook name follows: it is derived
    written = json.loads((sae.save_pretrained(tmp_path / "out") / "cfg.json").read_text())
    assert written["metadata"]["hook_name"] == "blocks.6.hook_resid_mid"
    assert (load_sae(tmp_path / "out").cfg.layer, load_sae(tmp_path / "out").cfg.site) == (
        6,
        "resid_mid",
    )
