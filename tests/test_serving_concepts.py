"""The concept library: a steering item resolves to the intervention SteeredModel builds from
the same artifact and options; what it cannot serve is a 400 naming the item."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from arch_models import tiny_sae

from hf_sae_steer.models import load_model
from hf_sae_steer.sae.loading import load_sae
from hf_sae_steer.scores.record import load_scores
from hf_sae_steer.serving.concepts import (
    ConceptLibrary,
    concepts_in,
    load_library,
    parse_concept_args,
)
from hf_sae_steer.serving.errors import RequestError
from hf_sae_steer.serving.steering_items import parse_steering
from hf_sae_steer.steering.spec import SteeringSpec, resolve_spec
from hf_sae_steer.steering.steered import SteeredModel

DEMO = Path(__file__).resolve().parents[1] / "storage" / "demo"


@pytest.fixture(scope="module")
def demo():
    model, _ = load_model(str(DEMO / "model"))
    sae = load_sae(str(DEMO / "sae"))
    library = load_library(model, [sae], {"med": str(DEMO / "scores"),
                                          "seed": str(DEMO / "scores_seed")})  # fmt: skip
    return model, sae, library


@pytest.mark.parametrize(
    "item, options",
    [
        ({"concept": "med"}, {}),
        ({"concept": "seed"}, {}),
        ({"concept": "med", "method": "vector"}, {"method": "vector"}),
        ({"vector": "med", "strength": 2}, {"method": "vector", "strength": 2.0}),
        ({"concept": "med", "method": "clamp", "positions": "prompt"},
         {"method": "clamp", "positions": "prompt"}),
        ({"concept": "med", "strength": "recommended"}, {}),
        ({"concept": "med", "preserve_error": False}, {"preserve_error": False}),
    ],
)  # fmt: skip
def test_items_resolve_as_steered_model_does(demo, item, options):
    model, sae, library = demo
    name = item.get("concept") or item.get("vector")
    resolved = library.resolve(parse_steering([item]))
    (edit,) = resolved.edits
    with SteeredModel(model, sae, scores=DEMO / ("scores" if name == "med" else "scores_seed"),
                      **options) as steered:  # fmt: skip
        (step,), (site,) = steered.interventions, steered.sites
    assert edit.site == site and edit.positions == options.get("positions", "all")
    got = edit.step
    assert (got.method, got.strength, got.preserve_error) == (
        step.method, step.strength, step.preserve_error)  # fmt: skip
    applied = resolved.applied[0]
    assert applied["method"] == step.method and applied["strength"] == step.strength
    assert (applied["layer"], applied["site"]) == (site.layer, site.kind)
    x = torch.randn(2, 3, 128, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(got(x), step(x), rtol=0, atol=0)


def test_calibrated_strength_is_the_default_norm_fraction(demo):
    model, sae, library = demo
    artifact = load_scores(DEMO / "scores")
    (edit,) = library.resolve(parse_steering([{"vector": "med", "strength": "calibrated"}])).edits
    vector = artifact.stats["delta_raw"].double()
    expected = 0.5 * artifact.calibration["mean_norm_raw"] / float(vector.norm())
    assert edit.step.strength == pytest.approx(expected, rel=1e-9)


def test_the_same_item_shares_one_edit_and_keys_differ_by_steering(demo):
    _, _, library = demo
    a = library.resolve(parse_steering([{"concept": "med"}]))
    b = library.resolve(parse_steering([{"concept": "med"}]))
    c = library.resolve(parse_steering([{"latents": {"1": 2.0}}]))
    d = library.resolve(parse_steering([{"latents": {"2": 2.0}}]))
    assert a.edits[0] is b.edits[0] and a.key == b.key
    assert len({a.key, c.key, d.key}) == 3 and library.resolve(()).key == ""


@pytest.mark.parametrize(
    "item, match",
    [
        ({"concept": "nope"}, "unknown concept 'nope'; this server has: med, seed"),
        ({"vector": "nope"}, "unknown concept"),
        ({"concept": "med", "strength": "recommended", "method": "swap"},
         "recommends add, not 'swap'"),
        ({"concept": "seed", "strength": "calibrated"},
         r'^steering\[0\]: The strength "calibrated" is .* these scores have none .*: give swap '
         r"a number as its strength\.$"),
        ({"concept": "med", "method": "clamp", "strength": "calibrated"},
         "it measured add only, not clamp: give clamp a number as its strength, or steer with add"),
        ({"latents": {"5000": 1.0}}, "out of range for d_sae=1024"),
        ({"latents": {"1": 1.0}, "layer": 3}, "no served SAE at layer=3"),
    ],
)  # fmt: skip
def test_items_the_library_cannot_serve_are_400(demo, item, match):
    with pytest.raises(RequestError, match=match) as info:
        demo[2].resolve(parse_steering([item]))
    assert info.value.status == 400 and info.value.param == "steering[0]"


def test_concepts_must_fit_a_served_sae(demo, tmp_path):
    model, _, _ = demo
    other = tiny_sae(d=128, n=1024, layer=2, site="resid_post")
    with pytest.raises(ValueError, match="Concept 'med' fits none of the served SAEs"):
        ConceptLibrary(model, [other], {"med": load_scores(DEMO / "scores")})


def test_concept_arguments_and_folders(tmp_path):
    assert parse_concept_args(["a=x", "b.c=hub/id"]) == {"a": "x", "b.c": "hub/id"}
    for bad, match in (["a"], "NAME=PATH"), (["a=x", "a=y"], "twice"), (["a b=x"], "not allowed"):
        with pytest.raises(ValueError, match=match):
            parse_concept_args(bad)
    load_scores(DEMO / "scores").save_pretrained(tmp_path / "medical")
    (tmp_path / "notes").mkdir()
    assert concepts_in(tmp_path) == {"medical": str(tmp_path / "medical")}
    with pytest.raises(ValueError, match="holds no score artifact"):
        concepts_in(tmp_path / "notes")


def test_direction_reaches_the_steering_spec(demo):
    """``direction`` goes to SteeringSpec as given: the served edit is what resolve_spec makes
    of the same spec (away: the artifact's suppression, or directional ablation for an artifact
    from before 0.4, which records no topic latents)."""
    model, sae, library = demo
    toward = library.resolve(parse_steering([{"concept": "med", "direction": "toward"}]))
    assert toward.applied[0]["direction"] == "toward"
    assert toward.edits == library.resolve(parse_steering([{"concept": "med"}])).edits
    spec = SteeringSpec(sae, scores=load_scores(DEMO / "scores"), direction="away")
    site, step = resolve_spec(spec, model, library.layout)
    away = library.resolve(parse_steering([{"concept": "med", "direction": "away"}]))
    (edit,) = away.edits
    assert edit.site == site and away.applied[0]["direction"] == "away"
    assert edit.step.method == step.method
    x = torch.randn(2, 3, 128, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(edit.step(x), step(x), rtol=0, atol=0)
    gated = SteeringSpec(sae, scores=load_scores(DEMO / "scores"), direction="away",
                         method="attenuate", strength=3)  # fmt: skip
    _, step = resolve_spec(gated, model, library.layout)
    item = {"concept": "med", "direction": "away", "method": "attenuate", "strength": 3}
    (edit,) = library.resolve(parse_steering([item])).edits
    assert edit.step.method == step.method == "attenuate"
    torch.testing.assert_close(edit.step(x), step(x), rtol=0, atol=0)
    assert not torch.allclose(step(x), x)
