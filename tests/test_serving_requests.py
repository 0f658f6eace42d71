"""The request schema: valid bodies become plain records, every bad one one RequestError."""

from __future__ import annotations

import math

import pytest

from hf_sae_steer.serving import schema
from hf_sae_steer.serving.schema import (
    Limits,
    RequestError,
    SteeringItem,
    parse_chat,
    parse_completion,
    parse_steering,
)
from hf_sae_steer.steering import interventions, positions


def test_the_schema_agrees_with_the_library():
    assert schema.METHODS == interventions.METHODS
    assert schema.MAX_STRENGTH == interventions.MAX_STRENGTH
    assert schema.POSITIONS == positions.POSITIONS


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


def test_completion_and_chat_bodies():
    req = parse_completion({"model": "m", "prompt": "Hi", "max_tokens": 5, "temperature": 0,
                            "stream": True, "stop": "\n", "seed": 3,
                            "stream_options": {"include_usage": True},
                            "steering": [{"concept": "a"}]})  # fmt: skip
    assert (req.prompt, req.max_tokens, req.stream, req.stop) == ("Hi", 5, True, ("\n",))
    assert req.sampling.greedy and req.sampling.seed == 3 and req.include_usage
    assert req.steering == (SteeringItem(concept="a"),)
    assert parse_completion({"prompt": ["Hi"]}).prompt == "Hi"
    assert parse_completion({"prompt": [1, 2, 3]}).prompt == (1, 2, 3)
    chat = parse_chat({"messages": [{"role": "system", "content": "Be brief."},
                                    {"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
                       "max_completion_tokens": 7})  # fmt: skip
    assert [m.content for m in chat.messages] == ["Be brief.", "Hi"] and chat.max_tokens == 7
    assert chat.sampling.temperature == 1.0 and chat.steering == ()


@pytest.mark.parametrize(
    "body, match",
    [
        ([], "must be a JSON object"),
        ({"prompt": ["a", "b"]}, "one string"),
        ({"prompt": 3}, "one string"),
        ({"prompt": "a", "max_tokens": 0}, "max_tokens must be a whole number >= 1"),
        ({"prompt": "a", "max_tokens": 2.5}, "max_tokens"),
        ({"prompt": "a", "temperature": 3}, "temperature must be a number from 0 to 2"),
        ({"prompt": "a", "top_p": 0}, "top_p must be above 0"),
        ({"prompt": "a", "n": 2}, "n must be 1"),
        ({"prompt": "a", "stop": ["a"] * 5}, "stop must be"),
        ({"prompt": "a", "steerng": []}, r"Unknown or unsupported field\(s\): steerng"),
        ({"prompt": "a", "echo": True}, "echo"),
        ({"prompt": "a", "logprobs": 2}, "logprobs"),
        ({"prompt": "a", "presence_penalty": 1}, "presence_penalty"),
        ({"prompt": "a", "ignore_eos": "yes"}, "ignore_eos must be true or false"),
        ({"prompt": "x" * 101}, "The prompt has 101 characters; this server takes at most 100"),
    ],
)
def test_bad_completion_bodies(body, match):
    with pytest.raises(RequestError, match=match):
        parse_completion(body, Limits(max_prompt_chars=100))


@pytest.mark.parametrize(
    "body, match",
    [
        ({"messages": []}, "non-empty list"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "needs a role"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "only text"),
        ({"messages": [{"role": "user", "content": "x" * 60}] * 2}, "120 characters"),
        ({"messages": [{"role": "user", "content": "x"}], "tools": []}, "tools"),
    ],
)
def test_bad_chat_bodies(body, match):
    with pytest.raises(RequestError, match=match):
        parse_chat(body, Limits(max_prompt_chars=100))
