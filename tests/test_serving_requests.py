"""Completion and chat bodies: valid ones become plain records, every bad one one RequestError."""

from __future__ import annotations

import pytest

from hf_sae_steer.serving.errors import RequestError
from hf_sae_steer.serving.limits import Limits
from hf_sae_steer.serving.requests import parse_chat, parse_completion
from hf_sae_steer.serving.steering_items import SteeringItem


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
