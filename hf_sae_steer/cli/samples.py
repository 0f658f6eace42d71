"""Sampled continuations shown with the topic's words marked (the demo and the web app).

Several samples per prompt, drawn with repetition control (``repetition_penalty``,
``no_repeat_ngram_size``): a greedy or looping continuation shows one phrase again and again
and hides what the steering favours. Every condition draws the same random numbers
(:class:`~hf_sae_steer.generation.Generator`), so the samples differ by the steering alone.
The topic's words are the whole-word tokens the steering raises most (cli/highlight.py).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from hf_sae_steer.cli.highlight import Style, marked, topic_spans
from hf_sae_steer.generation import Generator, sampling_options

SHOWN_SAMPLES = 3
REPETITION_PENALTY = 1.3
NO_REPEAT_NGRAM_SIZE = 3
TEMPERATURE, TOP_K = 1.0, 50
TOPIC_TOKENS = 20  # the topic's words: the 20 whole-word tokens the steering raises most


@dataclass
class Shown:
    """One shown continuation: its text and the spans of the topic's words in it."""

    text: str
    spans: list[tuple[int, int]]

    def marked(self, style: Style) -> str:
        return marked(self.text, self.spans, style)

    @property
    def words(self) -> list[str]:
        return [self.text[a:b] for a, b in self.spans]


def sample_generator(
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    samples: int = SHOWN_SAMPLES,
    max_new_tokens: int = 24,
    repetition_penalty: float = REPETITION_PENALTY,
    no_repeat_ngram_size: int = NO_REPEAT_NGRAM_SIZE,
    seed: int = 0,
    batch_size: int = 16,
) -> Generator:
    """The generator of the shown samples (the same for every condition: the same draws)."""
    options = sampling_options(
        max_new_tokens=max_new_tokens, do_sample=True, temperature=TEMPERATURE, top_k=TOP_K,
        repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
    )  # fmt: skip
    return Generator(tokenizer, prompts, samples=samples, seed=seed, batch_size=batch_size,
                     options=options)  # fmt: skip


def shown_samples(
    model: nn.Module, generator: Generator, topic: Collection[int], *, progress: bool = False
) -> list[list[Shown]]:
    """Per prompt, its samples under ``model`` (plain or steered) with ``topic``'s tokens
    marked."""
    continuations, _ = generator.run(model, progress=progress)
    rows: list[list[Shown]] = [[] for _ in generator.prompts]
    for c in continuations:
        text, spans = topic_spans(generator.tokenizer, c.token_ids, topic)
        rows[c.prompt_index].append(Shown(text, spans))
    return rows


def describe_options(
    repetition_penalty: float = REPETITION_PENALTY, no_repeat_ngram_size: int = NO_REPEAT_NGRAM_SIZE
) -> str:
    """How samples are drawn, in words (the defaults: what the app shows)."""
    return (
        f"temperature {TEMPERATURE:g}, top-k {TOP_K}, repetition_penalty "
        f"{repetition_penalty:g}, no_repeat_ngram_size {no_repeat_ngram_size}"
    )


def describe(generator: Generator) -> str:
    """How the samples were drawn, in words."""
    o = generator.options
    return (
        f"temperature {o.get('temperature', TEMPERATURE):g}, top-k {o.get('top_k', TOP_K)}, "
        f"repetition_penalty {o.get('repetition_penalty', 1.0):g}, "
        f"no_repeat_ngram_size {o.get('no_repeat_ngram_size', 0)}"
    )
