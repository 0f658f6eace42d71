"""From a validated request to what an engine generates: the chat prompt, the token ids, the
token budget and the resolved steering. No HTTP here; every problem is a
:class:`~hf_sae_steer.serving.errors.RequestError`.

**Chat prompts.** With a chat template (``tokenizer.chat_template``) the messages are rendered
by it with the generation prompt added. Without one (base models such as GPT-2 and the demo)
the plain fallback is one line per message, ``"{role}: {content}"``, then ``"assistant:"``,
which the model continues.

**Token budget.** ``max_tokens`` must fit the context: prompt tokens + ``max_tokens`` <=
the engine's ``context_length``, else 400 with both numbers (no silent clamping). Without
``max_tokens``, completions get 16 tokens (OpenAI's default) and chats the rest of the
context up to ``default_chat_tokens``; both capped by the room left. ``echo`` with
``max_tokens=0`` only scores the prompt, which may then fill the context.

**Choices.** Each prompt of a list, and each of ``n`` samples of it, is one engine request;
sample ``j`` is seeded with ``seed + j``. A steered model id (:mod:`.served_models`) puts its
steering items before the request's own.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from hf_sae_steer.serving.concepts import ConceptLibrary, ResolvedSteering
from hf_sae_steer.serving.engine import Engine, GenerationRequest
from hf_sae_steer.serving.errors import RequestError
from hf_sae_steer.serving.limits import Limits
from hf_sae_steer.serving.requests import ChatMessage, ParsedRequest
from hf_sae_steer.serving.sampling import Sampling
from hf_sae_steer.serving.served_models import ServedModels

COMPLETION_DEFAULT_TOKENS = 16


@dataclass(frozen=True)
class ServeLimits(Limits):
    """The schema's limits plus the server's defaults for the token budget."""

    default_chat_tokens: int = 256
    max_body_bytes: int | None = None  # default: room for the longest prompt, JSON-escaped

    @property
    def body_limit(self) -> int:
        return self.max_body_bytes or max(1_000_000, 16 * self.max_prompt_chars + 65_536)


def render_chat(tokenizer: Any, messages: tuple[ChatMessage, ...]) -> tuple[str, bool]:
    """The prompt text of ``messages``, and whether it came from a chat template (its special
    tokens are in the text, so it is tokenized without adding more)."""
    plain = [{"role": m.role, "content": m.content} for m in messages]
    if getattr(tokenizer, "chat_template", None):
        try:
            text = tokenizer.apply_chat_template(plain, tokenize=False, add_generation_prompt=True)
        except Exception as error:  # noqa: BLE001 - templates raise anything (jinja errors)
            raise RequestError(
                f"The model's chat template refused these messages: {error}".splitlines()[0],
                param="messages",
            ) from None
        return str(text), True
    lines = [f"{m.role}: {m.content}" for m in messages]
    return "\n".join([*lines, "assistant:"]), False


@dataclass(frozen=True)
class Prepared:
    """A request ready for the engine: ``jobs`` in choice order (prompt ``i``'s sample ``j``
    is choice ``i * n + j``), each prompt's token ids and text (``prompt_texts``: what
    ``echo`` returns), the model id to report and the resolved steering."""

    model: str
    jobs: tuple[GenerationRequest, ...]
    prompt_ids: tuple[tuple[int, ...], ...]
    prompt_texts: tuple[str, ...]
    steering: ResolvedSteering

    @property
    def n(self) -> int:
        return len(self.jobs) // len(self.prompt_ids)


def prepare(
    parsed: ParsedRequest,
    engine: Engine,
    library: ConceptLibrary,
    limits: ServeLimits,
    served: ServedModels | tuple[str, ...] = (),
) -> Prepared:
    """Tokenize, check the budget, resolve the steering (see the module docstring)."""
    if not isinstance(served, ServedModels):
        served = ServedModels(served or (engine.name,))
    model, model_steering = served.pick(parsed.model)
    steering = library.resolve((*model_steering, *parsed.steering))  # errors before tokenizing
    tokenizer = engine.tokenizer
    vocab = len(tokenizer)
    _check_token_ids(parsed, vocab)
    prompts: list[tuple[int, ...]] = []
    texts: list[str] = []
    if parsed.kind == "chat":
        text, templated = render_chat(tokenizer, parsed.messages or ())
        prompts.append(tuple(tokenizer(text, add_special_tokens=not templated)["input_ids"]))
        texts.append(text)
    for prompt in parsed.prompts:
        if isinstance(prompt, str):
            prompts.append(tuple(tokenizer(prompt)["input_ids"]))
            texts.append(prompt)
        else:
            if any(not 0 <= t < vocab for t in prompt):
                raise RequestError(
                    f"A prompt token id is outside the vocabulary (0..{vocab - 1}).",
                    param="prompt",
                )
            prompts.append(tuple(prompt))
            texts.append(tokenizer.decode(list(prompt)))
    budgets = [_budget(parsed, ids, engine.context_length, limits) for ids in prompts]
    jobs = tuple(
        GenerationRequest(
            list(ids),
            budget,
            _sample_seed(parsed.sampling, j),
            steering,
            ignore_eos=parsed.ignore_eos,
            logprobs=parsed.logprobs,
            prompt_logprobs=parsed.logprobs if parsed.echo else None,
        )  # fmt: skip
        for ids, budget in zip(prompts, budgets, strict=True)
        for j in range(parsed.n)
    )
    return Prepared(model, jobs, tuple(prompts), tuple(texts), steering)


def _budget(parsed: ParsedRequest, ids: tuple[int, ...], context: int, limits: ServeLimits) -> int:
    if not ids:
        raise RequestError("The prompt is empty: give at least one token.", param="prompt")
    scoring_only = parsed.echo and parsed.max_tokens == 0
    room = context - len(ids)
    if room < (0 if scoring_only else 1):
        raise RequestError(
            f"The prompt has {len(ids)} tokens; the model's context holds {context}, with room "
            "for at least one new token. Shorten the prompt.",
            param="prompt", code="context_length_exceeded",
        )  # fmt: skip
    max_tokens = parsed.max_tokens
    if max_tokens is None:
        default = (
            COMPLETION_DEFAULT_TOKENS if parsed.kind == "completion" else limits.default_chat_tokens
        )
        return min(default, room)
    if max_tokens > room:
        raise RequestError(
            f"max_tokens={max_tokens} is too large: the prompt has {len(ids)} tokens and the "
            f"model's context holds {context}, so at most {room} new tokens fit.",
            param="max_tokens", code="context_length_exceeded",
        )  # fmt: skip
    return max_tokens


def _sample_seed(sampling: Sampling, j: int) -> Sampling:
    """Sample ``j`` of ``n``: seed + j, so each sample is reproducible and differs from the
    others (sample 0 is what the same request with ``n=1`` gives)."""
    if j == 0 or sampling.seed is None:
        return sampling
    return replace(sampling, seed=(sampling.seed + j) % 2**63)


def _check_token_ids(parsed: ParsedRequest, vocab: int) -> None:
    for name, ids in (("logit_bias", [t for t, _ in parsed.sampling.logit_bias]),
                      ("stop_token_ids", parsed.sampling.stop_token_ids)):  # fmt: skip
        bad = [t for t in ids if t >= vocab]
        if bad:
            raise RequestError(
                f"{name}: token id {bad[0]} is outside the vocabulary (0..{vocab - 1}).",
                param=name,
            )
