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
    "body, match, param",
    [
        ([], "must be a JSON object", None),
        ({"prompt": 3}, "prompt must be a string, a list of token ids", "prompt"),
        ({"prompt": []}, "non-empty list", "prompt"),
        ({"prompt": ["a", [1, 2]]}, "a non-empty list of either", "prompt"),
        ({"prompt": [[1, 2], []]}, "a non-empty list of either", "prompt"),
        ({"prompt": [True]}, "a non-empty list of either", "prompt"),
        ({"prompt": ["a"] * 65}, "65 prompts; at most 64", "prompt"),
        ({"prompt": "a", "max_tokens": 0}, "0 only with echo", "max_tokens"),
        ({"prompt": "a", "max_tokens": 2.5}, "max_tokens", "max_tokens"),
        ({"prompt": "a", "echo": True, "max_tokens": -1}, ">= 0", "max_tokens"),
        ({"prompt": "a", "temperature": 3}, "temperature must be a number from 0 to 2",
         "temperature"),
        ({"prompt": "a", "top_p": 0}, "top_p must be above 0", "top_p"),
        ({"prompt": "a", "top_p": 1e-400}, "top_p must be above 0", "top_p"),
        ({"prompt": "a", "n": 0}, "n must be a whole number >= 1", "n"),
        ({"prompt": ["a", "b"], "n": 33}, "66 choices; at most 64", "n"),
        ({"prompt": "a", "n": 2, "best_of": 3}, "best_of must equal n", "best_of"),
        ({"prompt": "a", "best_of": 2}, "best_of must equal n", "best_of"),
        ({"prompt": "a", "suffix": "end"}, "suffix is not supported", "suffix"),
        ({"prompt": "a", "stop": ["a"] * 5}, "stop must be", "stop"),
        ({"prompt": "a", "steerng": []}, r"Unknown or unsupported field\(s\): steerng", "steerng"),
        ({"prompt": "a", "tools": []}, "tools", "tools"),
        ({"prompt": "a", "echo": "yes"}, "echo must be true or false", "echo"),
        ({"prompt": "a", "logprobs": 21}, "logprobs must be a whole number from 0 to 20",
         "logprobs"),
        ({"prompt": "a", "logprobs": True}, "logprobs must be a whole number", "logprobs"),
        ({"prompt": "a", "presence_penalty": 2.5}, "presence_penalty must be a number from -2",
         "presence_penalty"),
        ({"prompt": "a", "frequency_penalty": "x"}, "frequency_penalty", "frequency_penalty"),
        ({"prompt": "a", "repetition_penalty": 0}, "repetition_penalty must be a number from "
         "0.01 to 100", "repetition_penalty"),
        ({"prompt": "a", "top_k": 2.5}, "top_k must be a whole number", "top_k"),
        ({"prompt": "a", "min_p": 1.5}, "min_p must be a number from 0 to 1", "min_p"),
        ({"prompt": "a", "min_tokens": 5, "max_tokens": 4}, "min_tokens=5 is more than "
         "max_tokens=4", "min_tokens"),
        ({"prompt": "a", "stop_token_ids": [1, -2]}, "stop_token_ids must be a list",
         "stop_token_ids"),
        ({"prompt": "a", "logit_bias": {"x": 1}}, "'x' is not a token id", "logit_bias"),
        ({"prompt": "a", "logit_bias": {"5": 101}}, "logit_bias\\[5\\] must be a number from "
         "-100 to 100", "logit_bias"),
        ({"prompt": "a", "logit_bias": [1]}, "logit_bias must be an object", "logit_bias"),
        ({"prompt": "a", "stream_options": {"include_usage": True}}, "stream_options is only "
         "allowed with stream: true", "stream_options"),
        ({"prompt": "a", "stream": True, "stream_options": {"x": 1}}, "takes only include_usage",
         "stream_options"),
        ({"prompt": "a", "ignore_eos": "yes"}, "ignore_eos must be true or false", "ignore_eos"),
        ({"prompt": "x" * 101}, "The prompt has 101 characters; this server takes at most 100",
         "prompt"),
    ],
)  # fmt: skip
def test_bad_completion_bodies(body, match, param):
    with pytest.raises(RequestError, match=match) as info:
        parse_completion(body, Limits(max_prompt_chars=100))
    assert info.value.param == param and "\n" not in str(info.value)


def test_prompt_lists_n_logprobs_and_echo():
    many = parse_completion({"prompt": ["a", "b"], "n": 3, "best_of": 3, "logprobs": 0,
                             "echo": True, "max_tokens": 0})  # fmt: skip
    assert many.prompts == ("a", "b") and many.n == 3 and many.logprobs == 0 and many.echo
    assert many.max_tokens == 0 and many.prompt is None
    ids = parse_completion({"prompt": [[1, 2], [3]]})
    assert ids.prompts == ((1, 2), (3,)) and ids.n == 1 and ids.logprobs is None
    assert not ids.echo
    chat = parse_chat({"messages": [{"role": "user", "content": "x"}], "logprobs": True,
                       "top_logprobs": 5, "n": 2})  # fmt: skip
    assert chat.logprobs == 5 and chat.n == 2 and chat.prompts == ()
    assert parse_chat({"messages": [{"role": "user", "content": "x"}], "logprobs": True}
                      ).logprobs == 0  # fmt: skip
    assert parse_chat({"messages": [{"role": "user", "content": "x"}], "logprobs": False}
                      ).logprobs is None  # fmt: skip


def test_sampling_controls_parse():
    s = parse_completion({"prompt": "a", "top_k": 5, "min_p": 0.1, "repetition_penalty": 1.2,
                          "presence_penalty": -1, "frequency_penalty": 0.5, "min_tokens": 2,
                          "max_tokens": 4, "stop_token_ids": [3, 3, 9],
                          "logit_bias": {"12": -100, "40": 2.5}}).sampling  # fmt: skip
    assert (s.top_k, s.min_p, s.repetition_penalty) == (5, 0.1, 1.2)
    assert (s.presence_penalty, s.frequency_penalty, s.min_tokens) == (-1.0, 0.5, 2)
    assert s.stop_token_ids == (3, 9) and s.logit_bias == ((12, -100.0), (40, 2.5))
    assert parse_completion({"prompt": "a", "top_k": -1}).sampling.top_k == 0  # vLLM's "off"


def test_fields_that_cannot_change_the_output_are_accepted_and_ignored():
    extra = {"user": "u-1", "metadata": {"run": "x"}, "store": False, "service_tier": "auto",
             "parallel_tool_calls": True, "reasoning_effort": "low",
             "safety_identifier": "s", "prompt_cache_key": "k"}  # fmt: skip
    body = {"prompt": "Hi", "max_tokens": 3, "temperature": 0}
    assert parse_completion({**body, **extra}) == parse_completion(body)
    chat = {"messages": [{"role": "user", "content": "x"}]}
    assert parse_chat({**chat, **extra}) == parse_chat(chat)


@pytest.mark.parametrize(
    "body, match",
    [
        ({"messages": []}, "non-empty list"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "needs a role"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "only text"),
        ({"messages": [{"role": "user", "content": "x" * 60}] * 2}, "120 characters"),
        ({"messages": [{"role": "user", "content": "x"}], "tools": []}, "tools"),
        ({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2},
         "top_logprobs needs logprobs: true"),
        ({"messages": [{"role": "user", "content": "x"}], "logprobs": False, "top_logprobs": 2},
         "top_logprobs needs logprobs: true"),
        ({"messages": [{"role": "user", "content": "x"}], "logprobs": 0},
         "logprobs must be true or false"),
        ({"messages": [{"role": "user", "content": "x"}], "logprobs": True, "top_logprobs": 21},
         "top_logprobs must be a whole number from 0 to 20"),
        ({"messages": [{"role": "user", "content": "x"}], "echo": True}, "echo"),
        ({"messages": [{"role": "user", "content": "x"}], "stream_options": {}},
         "only allowed with stream"),
    ],
)  # fmt: skip
def test_bad_chat_bodies(body, match):
    with pytest.raises(RequestError, match=match) as info:
        parse_chat(body, Limits(max_prompt_chars=100))
    assert info.value.param in str(info.value) or info.value.param.startswith("messages")
