"""Interventions on bare tensors, against the plain docs/method.md implementation in
method_reference."""

from __future__ import annotations

import pytest
import torch
from method_reference import ReferenceOpenAISAE, steer_sequence
from sae_factories import openai_state

from hf_sae_steer import METHODS, Intervention, LatentEdit, SAEConfig
from hf_sae_steer.sae import SparseCode, TopKSAE, load_sae
from hf_sae_steer.steering.suppression import TopicLatents

D, N = 24, 96


@pytest.fixture(params=["topk", "relu"])
def openai_pair(request, tmp_path):
    k = 6 if request.param == "topk" else None
    state = openai_state(D, N, k=k, seed=1)
    path = tmp_path / "sae.pt"
    torch.save(state, path)
    return load_sae(path), ReferenceOpenAISAE(state)


@pytest.fixture
def scores():
    return torch.rand(N, generator=torch.Generator().manual_seed(2))


def hidden(batch=2, seq=5, seed=3):
    return torch.randn(batch, seq, D, generator=torch.Generator().manual_seed(seed)) * 3 + 0.5


ADDED = {7: 1.5, 30: 0.25, 61: 2.0}
TOPIC = [3, 7, 30, 44, 61, 80]


def extra_arguments(method):
    """What add and vector need: latents with weights, a vector (for the library and the
    plain reference alike)."""
    vector = torch.randn(D, generator=torch.Generator().manual_seed(9))
    latents = SparseCode(torch.tensor(list(ADDED)), torch.tensor(list(ADDED.values())))
    if method == "add":
        return {"latents": latents}, {"added": ADDED}
    if method == "suppress":
        return {"topic": TopicLatents(torch.tensor(TOPIC))}, {"topic": TOPIC}
    if method == "attenuate":
        odds = [0.9, -0.4, 1.7, 0.3, 2.2, -1.0]
        return ({"topic": TopicLatents(torch.tensor(TOPIC), torch.tensor(odds), -1.3),
                 "vector": vector},
                {"topic": TOPIC, "log_odds": odds, "bias": -1.3, "vector": vector})  # fmt: skip
    return ({"vector": vector}, {"vector": vector}) if method in ("vector", "ablate") else ({}, {})


@pytest.mark.parametrize("preserve_error", [False, True])
@pytest.mark.parametrize("method", METHODS)
def test_methods_match_reference(openai_pair, scores, method, preserve_error):
    sae, ref = openai_pair
    x = hidden()
    mine, plain = extra_arguments(method)
    got = Intervention(sae, method, scores, preserve_error=preserve_error, **mine)(x)
    want = steer_sequence(ref, x, method, scores, preserve_error=preserve_error, **plain)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("strength", [0.5, 3.0])
def test_calibrated_clamp_and_additive_strengths(openai_pair, scores, strength):
    """clamp_value=None adds each top latent's typical activation; with preserve_error the
    additive methods skip the encoder yet match the plain per-token reference."""
    sae, ref = openai_pair
    x = hidden()
    typical = torch.rand(N, generator=torch.Generator().manual_seed(5)) * 3
    got = Intervention(
        sae, "clamp", scores, clamp_value=None, typical=typical, strength=strength,
        preserve_error=True,
    )(x)  # fmt: skip
    want = steer_sequence(
        ref, x, "clamp", scores, preserve_error=True, strength=strength, clamp=typical
    )
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    mine, plain = extra_arguments("add")
    got = Intervention(sae, "add", preserve_error=True, strength=strength, **mine)(x)
    want = steer_sequence(ref, x, "add", None, preserve_error=True, strength=strength, **plain)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["sae", "clamp", "weight", "swap"])
def test_methods_change_the_state(openai_pair, scores, method):
    sae, _ = openai_pair
    x = hidden()
    assert (Intervention(sae, method, scores)(x) - x).abs().max() > 1e-3


def test_weight_and_swap_differ_in_values_not_selection(openai_pair, scores):
    sae, _ = openai_pair
    x = hidden()
    weight = Intervention(sae, "weight", scores)(x)
    swap = Intervention(sae, "swap", scores)(x)
    assert (weight - swap).abs().max() > 1e-4


@pytest.mark.parametrize("strength", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("preserve_error", [False, True])
def test_strength_interpolates(openai_pair, scores, strength, preserve_error):
    sae, ref = openai_pair
    x = hidden()
    got = Intervention(sae, "swap", scores, strength=strength, preserve_error=preserve_error)(x)
    want = steer_sequence(ref, x, "swap", scores, preserve_error=preserve_error, strength=strength)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    if strength == 0.0:
        assert torch.equal(got, x)


class DenseTopK(TopKSAE):
    """The same TopK SAE, but without the k-sparse fast path (forces dense decoding)."""

    @property
    def k(self):
        return None


@pytest.mark.parametrize("preserve_error", [False, True])
@pytest.mark.parametrize("method", METHODS)
def test_sparse_and_dense_paths_agree(scores, method, preserve_error):
    state = openai_state(D, N, k=6, seed=4)
    cfg = SAEConfig(d_in=D, d_sae=N, activation="topk", k=6, normalize_activations="layer_norm")
    weights = dict(
        W_enc=state["encoder.weight"].T.contiguous(),
        b_enc=state["latent_bias"],
        W_dec=state["decoder.weight"].T.contiguous(),
        b_dec=state["pre_bias"],
    )
    sparse, dense = TopKSAE(cfg), DenseTopK(cfg)
    sparse.load_state_dict(weights)
    dense.load_state_dict(weights)
    x = hidden()
    edits = [LatentEdit(1, 2.0, "add")]
    mine, _ = extra_arguments(method)
    options = dict(preserve_error=preserve_error, edits=edits, **mine)
    a = Intervention(sparse, method, scores, **options)(x)
    b = Intervention(dense, method, scores, **options)(x)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def _dense_edit_reference(ref, x, scores, method, edits):
    """Apply edits by hand on the reference's dense code (docs/method.md's sae/orig cases)."""
    out = torch.empty_like(x, dtype=torch.float64)
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            xt = x[b, t].double()
            xp, info = ref.preprocess(xt)
            z = ref.act(ref.pre(xp))
            z_new = z.clone()
            for index, value, mode in edits:
                if mode == "pin":
                    z_new[index] = value
                elif mode == "add":
                    z_new[index] = z_new[index] + value
                else:
                    z_new[index] = z_new[index] * value
            if method == "orig":
                out[b, t] = xt + ref.decode(z_new, info) - ref.decode(z, info)
            else:
                out[b, t] = ref.decode(z_new, info)
    return out.float()


@pytest.mark.parametrize("method", ["orig", "sae"])
def test_direct_latent_edits(openai_pair, scores, method):
    sae, ref = openai_pair
    x = hidden()
    pre = sae.encode_pre(sae.preprocess(x)[0])
    active = int(sae.activate(pre)[0, 0].argmax())  # a latent that fires, so multiply matters
    edits = [(3, 4.0, "pin"), (active, 2.5, "multiply"), (7, -1.5, "add")]
    step = Intervention(sae, method, scores, edits=[LatentEdit(i, v, m) for i, v, m in edits])
    torch.testing.assert_close(
        step(x), _dense_edit_reference(ref, x, scores, method, edits), atol=1e-5, rtol=1e-5
    )


def test_identity_shortcuts(openai_pair, scores):
    sae, _ = openai_pair
    x = hidden()
    assert Intervention(sae, "orig").is_identity
    assert Intervention(sae, "sae", preserve_error=True).is_identity
    assert Intervention(sae, "swap", scores, strength=0.0).is_identity
    assert not Intervention(sae, "orig", edits=[LatentEdit(0, 1.0)]).is_identity
    assert Intervention(sae, "orig")(x) is x


def test_follows_input_dtype_without_touching_the_users_sae(openai_pair, scores):
    sae, _ = openai_pair
    x = hidden().to(torch.bfloat16)
    out = Intervention(sae, "swap", scores)(x)
    assert out.dtype == torch.bfloat16
    assert sae.dtype == torch.float32


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(method="steer"), "Unknown method 'steer'"),
        (dict(method="swap"), "needs scores"),
        (dict(method="swap", scores=torch.rand(N + 1)), "length d_sae=96"),
        (dict(method="swap", scores=torch.rand(N, 2)), "1-D vector"),
        (dict(method="clamp", scores=torch.rand(N), clamp_k=N + 1), "clamp_k=97"),
        (dict(method="sae", strength=float("nan")), "strength must be a finite"),
        (dict(method="sae", edits=[LatentEdit(N, 1.0)]), "out of range for d_sae=96"),
    ],
)
def test_bad_input(openai_pair, kwargs, message):
    sae, _ = openai_pair
    with pytest.raises(ValueError, match=message):
        Intervention(sae, **kwargs)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_scores_are_refused(openai_pair, bad):
    sae, _ = openai_pair
    s = torch.rand(N)
    s[5] = bad
    with pytest.raises(ValueError, match="NaN/inf"):
        Intervention(sae, "swap", s)


def test_bad_edit_mode():
    with pytest.raises(ValueError, match="Unknown edit mode"):
        LatentEdit(0, 1.0, "scale")  # type: ignore[arg-type]


@pytest.mark.parametrize("norm", ["none", "layer_norm", "constant_norm_rescale"])
@pytest.mark.parametrize("center", [False, True])
def test_input_scale_is_the_scale_preprocessing_divides_by(norm, center):
    """The constant-add fast path scales its vector per token by ``input_scale``, computed
    without normalising ``x``: it must be the scale ``preprocess`` records."""
    from hf_sae_steer.sae import build_sae

    g = torch.Generator().manual_seed(0)
    cfg = SAEConfig(d_in=16, d_sae=8, activation="relu", normalize_activations=norm,
                    center_input=center)  # fmt: skip
    sae = build_sae(cfg, {"W_enc": torch.randn(16, 8, generator=g), "b_enc": torch.zeros(8),
                          "W_dec": torch.randn(8, 16, generator=g), "b_dec": torch.zeros(16)})
    x = torch.randn(2, 5, 16, generator=g) * 3 + 7
    _, info = sae.preprocess(x)
    scale = sae.input_scale(x)
    if info.scale is None:
        assert scale is None
    else:
        torch.testing.assert_close(scale, info.scale, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("strength", [0.5, 1.0, 2.5])
def test_suppression_gated_by_the_topic_posterior(openai_pair, strength):
    """suppress with a posterior: each token's topic latents scaled by 1 - s p(topic | token)."""
    sae, ref = openai_pair
    x = hidden()
    odds = [0.8, -0.3, 1.5, 0.2, 2.0, -1.0]
    topic = TopicLatents(torch.tensor(TOPIC), torch.tensor(odds), -1.2)
    got = Intervention(sae, "suppress", topic=topic, strength=strength)(x)
    want = steer_sequence(
        ref, x, "suppress", None, strength=strength, topic=TOPIC, log_odds=odds, bias=-1.2
    )
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_suppression_changes_nothing_where_no_topic_latent_fires(openai_pair):
    sae, _ = openai_pair
    x = hidden()
    fires = (sae.encode(x)[..., TOPIC] > 0).any(-1)
    got = Intervention(sae, "suppress", topic=TopicLatents(torch.tensor(TOPIC)), strength=2.0)(x)
    moved = (got - x).abs().amax(-1) > 1e-6
    assert bool((moved <= fires).all()) and bool(moved.any())


def test_ablation_removes_the_direction(openai_pair):
    sae, _ = openai_pair
    x = hidden()
    v = torch.randn(D, generator=torch.Generator().manual_seed(4))
    got = Intervention(None, "ablate", vector=v)(x)
    assert float((got @ (v / v.norm())).abs().max()) < 1e-4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "suppress"}, "needs the topic's latents"),
        ({"method": "ablate"}, "needs the topic direction"),
        ({"method": "ablate", "vector": torch.zeros(D)}, "not zero"),
        ({"method": "suppress", "topic": TopicLatents(torch.tensor([N + 3]))}, "out of range"),
    ],
)
def test_bad_suppressions(openai_pair, kwargs, message):
    sae, _ = openai_pair
    with pytest.raises(ValueError, match=message):
        Intervention(sae, **kwargs)
