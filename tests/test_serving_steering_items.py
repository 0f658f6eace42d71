"""Steering items: valid ones parse and round-trip, every bad one is one clear RequestError."""

from __future__ import annotations

import math

import pytest

from hf_sae_steer.serving.errors import RequestError
from hf_sae_steer.serving.steering_items import SteeringItem, parse_steering


def test_steering_items_parse_and_round_trip():
    items = parse_steering([
        {"concept": "medical"},
        {"concept": "medical", "strength": 2, "method": "swap", "positions": "generated",
         "preserve_error": False},
        {"latents": {"12": 3, "40": -1.5}, "layer": 2, "site": "resid_post"},
        {"vector": "medical", "strength": "calibrated"},
        {"concept": "x", "strength": "recommended"},
    ])  # fmt: skip
    assert items[0] == SteeringItem(concept="medical")
    assert items[1].strength == 2.0 and items[1].method == "swap"
    assert items[2].latents == ((12, 3.0), (40, -1.5)) and items[2].method == "add"
    assert items[3].kind == "vector" and items[3].method == "vector"
    assert parse_steering([i.to_dict() for i in items]) == items
    assert parse_steering(None) == () == parse_steering([])
    assert parse_steering({"concept": "a"}) == (SteeringItem(concept="a"),)  # one bare item


@pytest.mark.parametrize(
    "value, match",
    [
        ("medical", "must be a list"),
        ([{"concept": "a", "latents": {"1": 1}}], "exactly one of concept, latents or vector"),
        ([{}], "exactly one of"),
        ([3], "must be an object"),
        ([{"concept": "a", "strength": math.nan}], "finite number between -1000 and 1000"),
        ([{"concept": "a", "strength": math.inf}], "finite number"),
        ([{"concept": "a", "strength": 1001}], "between -1000 and 1000, got 1001"),
        ([{"concept": "a", "strength": "strong"}], "a number or one of recommended, calibrated"),
        ([{"concept": "a", "strength": True}], "a number or one of"),
        ([{"concept": "a", "method": "bogus"}], "method 'bogus' is unknown; use one of orig"),
        ([{"concept": "a", "positions": "middle"}], "positions 'middle' is unknown"),
        ([{"concept": "a", "stength": 2}], r"unknown field\(s\) stength"),
        ([{"concept": "a", "layer": 2}], r"unknown field\(s\) layer"),
        ([{"latents": {"x": 1}}], "'x' is not a latent index"),
        ([{"latents": {"-1": 1}}], "not a latent index"),
        ([{"latents": {}}], "non-empty object"),
        ([{"latents": {"1": math.nan}}], "finite"),
        ([{"latents": {"1": 1}, "method": "swap"}], "steers with method 'add', not 'swap'"),
        ([{"vector": "a", "method": "add"}], "steers with method 'vector'"),
        ([{"concept": ""}], "must be a concept name"),
        ([{"latents": {"1": 1}, "site": "resid_side"}], "site 'resid_side' is unknown"),
        ([{"concept": "a", "preserve_error": "yes"}], "true or false"),
        ([{"concept": "a"}] * 9, "at most 8"),
    ],
)
def test_bad_steering_is_one_clear_error(value, match):
    with pytest.raises(RequestError, match=match) as info:
        parse_steering(value)
    assert info.value.status == 400 and "\n" not in str(info.value)
    body = info.value.to_json()["error"]
    assert body["type"] == "invalid_request_error" and body["param"].startswith("steering")


def test_direction_parses_and_round_trips():
    toward, away, vector = parse_steering([
        {"concept": "medical"},
        {"concept": "medical", "direction": "away", "strength": 2},
        {"vector": "medical", "direction": "away"},
    ])  # fmt: skip
    assert toward.direction == "toward" and "direction" not in toward.to_dict()
    assert away.direction == "away" and away.to_dict()["direction"] == "away"
    assert vector.direction == "away"
    assert parse_steering([i.to_dict() for i in (toward, away, vector)]) == (toward, away, vector)


@pytest.mark.parametrize(
    "value, match",
    [
        (
            [{"concept": "a", "direction": "sideways"}],
            "direction 'sideways' is unknown; use one of toward, away",
        ),
        ([{"concept": "a", "direction": ["away"]}], "direction .* is unknown"),
        ([{"latents": {"1": 1}, "direction": "away"}], r"unknown field\(s\) direction"),
    ],
)
def test_bad_direction(value, match):
    with pytest.raises(RequestError, match=match) as info:
        parse_steering(value)
    assert info.value.param.startswith("steering[0]")
