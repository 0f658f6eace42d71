"""Steered model names: ``NAME=CONCEPT[:OPTIONS]`` parse into the concept item the same body
field would give, and a request's model id picks its steering (or is a 404 naming the ids)."""

from __future__ import annotations

import pytest

from hf_sae_steer.serving.errors import RequestError
from hf_sae_steer.serving.served_models import ServedModels, parse_steered_model
from hf_sae_steer.serving.steering_items import SteeringItem, parse_steering


@pytest.mark.parametrize(
    "value, item",
    [
        ("medical-demo=medical", {"concept": "medical"}),
        ("no-medical=medical:direction=away", {"concept": "medical", "direction": "away"}),
        ("m4=medical:method=add,strength=4", {"concept": "medical", "method": "add",
                                              "strength": 4}),
        ("org/m:v1=medical:strength=calibrated,positions=generated,preserve_error=False",
         {"concept": "medical", "strength": "calibrated", "positions": "generated",
          "preserve_error": False}),
    ],
)  # fmt: skip
def test_a_steered_model_is_the_concept_item_of_its_options(value, item):
    name, parsed = parse_steered_model(value)
    assert name == value.split("=")[0] and parsed == parse_steering([item])[0]


@pytest.mark.parametrize(
    "value, match",
    [
        ("medical", "takes NAME=CONCEPT"),
        ("=medical", "takes NAME=CONCEPT"),
        ("x=", "takes NAME=CONCEPT"),
        ("x y=medical", "name 'x y' is not allowed"),
        ("x=medical:strength", "option 'strength' is not key=value"),
        ("x=medical:latents=3", "option 'latents=3' is not key=value"),
        ("x=medical:preserve_error=maybe", "preserve_error is true or false"),
        ("x=medical:strength=lots", "a number or one of recommended, calibrated"),
        ("x=medical:method=boost", "method 'boost' is unknown"),
    ],
)
def test_bad_steered_models_are_one_clear_error(value, match):
    with pytest.raises(ValueError, match=match) as info:
        parse_steered_model(value)
    assert "\n" not in str(info.value) and not isinstance(info.value, RequestError)


def test_a_model_id_picks_its_steering():
    served = ServedModels.from_args(["base", "alias"], ["med=medical", "vec=medical:method=vector"])
    assert served.pick(None) == ("base", ()) and served.pick("alias") == ("alias", ())
    assert served.pick("med") == ("med", (SteeringItem(concept="medical"),))
    with pytest.raises(RequestError, match="'x' is not served here; use one of: base, med, vec"
                       ) as info:  # fmt: skip
        served.pick("x")
    assert info.value.status == 404 and info.value.param == "model"
    listing = served.listing(7, ["medical"])
    assert [m["id"] for m in listing] == ["base", "med", "vec"]
    assert [m["parent"] for m in listing] == [None, "base", "base"]
    assert listing[2]["steering"] == [{"concept": "medical", "method": "vector",
                                       "positions": "all"}]  # fmt: skip
    with pytest.raises(ValueError, match="given twice"):
        ServedModels.from_args(["base"], ["a=x", "a=y"])
    with pytest.raises(ValueError, match="base model's own name"):
        ServedModels.from_args(["base"], ["base=x"])
