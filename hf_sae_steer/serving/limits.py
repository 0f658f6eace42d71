"""What one request may ask for (prompt size, steering items, stop strings, choices, logprob
alternatives), checked while the body is parsed, before anything is tokenized."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; checked before anything is tokenized."""

    max_prompt_chars: int = 32_000
    max_steering: int = 8
    max_latents: int = 1024
    max_stop: int = 4
    max_stop_chars: int = 256
    max_messages: int = 512
    max_choices: int = 64  # prompts x n of one request
    max_logprobs: int = 20  # alternatives per token (vLLM's default max_logprobs)


DEFAULT_LIMITS = Limits()
