"""What a fit checks before any work: every option, with messages that name the argument and
its CLI flag, and the checkpoint's folder."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hf_sae_steer.folders import check_writable
from hf_sae_steer.scoring.calibration import TARGET_RATIO
from hf_sae_steer.scoring.rules import REGISTRY, check_rule_options, get_rule
from hf_sae_steer.scoring.walk.accumulation import CHUNK, Checkpointing
from hf_sae_steer.scoring.walk.passes import SUMMARIES
from hf_sae_steer.steering.strength import NORM_FRACTION, check_norm_fraction


def check_options(
    rule: str,
    *,
    summary: str = "avg",
    k: int | None = None,
    prior_prompts: float | None = None,
    norm_fraction: float = NORM_FRACTION,
    d_sae: int | None = None,
    rule_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The rule's options, if every option of a fit is valid (checked before any work; the
    messages name the arguments and their flags)."""
    if summary not in SUMMARIES:
        raise ValueError(f"Unknown summary {summary!r}; use one of {', '.join(SUMMARIES)}.")
    takes = get_rule(rule).option_names()
    check_norm_fraction(norm_fraction)
    given = {name: value for name, value in {"k": k, "prior_prompts": prior_prompts}.items()
             if value is not None}  # fmt: skip
    for name in given.keys() - set(takes):
        flag = name.replace("_", "-")
        raise ValueError(f"{name} (--{flag}) is an option of the rule {_taking(name)}, not {rule}.")
    given.update(rule_options or {})
    check_rule_options(rule, given, d_sae)
    return given


MAX_TARGET_RATIO = 100.0  # a steering that costs 100x the perplexity is no longer text


def check_calibration(
    calibrate_strength: bool, target_ratio: float | None, prompts: Sequence[str] | None = None
) -> float:
    """The target perplexity ratio of the fluency calibration (``None``: the default), if the
    calibration's options are valid; checked before any work, whatever the rule (the messages
    name the arguments and their flags, for the API and the CLI alike)."""
    if target_ratio is not None and not calibrate_strength:
        raise ValueError(
            "target_ratio (--target-ratio) is the calibration's target, but "
            "calibrate_strength=False (--no-calibrate) turns the calibration off: drop one of them."
        )
    target = TARGET_RATIO if target_ratio is None else target_ratio
    number = isinstance(target, (int, float)) and not isinstance(target, bool)
    if not (number and 1 < target < MAX_TARGET_RATIO):  # NaN fails both comparisons
        shown = f"{target:g}" if number and math.isfinite(target) else repr(target)
        raise ValueError(
            f"target_ratio (--target-ratio) must be a perplexity ratio above 1 and below "
            f"{MAX_TARGET_RATIO:g}, got {shown}: the calibrated strength keeps the steered "
            f"texts' perplexity under that many times the unsteered model's (default "
            f"{TARGET_RATIO:g})."
        )
    if prompts is not None and (
        isinstance(prompts, str)
        or not isinstance(prompts, Sequence)
        or not prompts
        or not all(isinstance(p, str) and p.strip() for p in prompts)
    ):
        raise ValueError(
            "calibration_prompts must be a non-empty list of texts (neutral sentence openings), "
            "none of them blank."
        )
    return float(target)


# The alignment set is read whole (loaded, embedded, passed at once): bounds that no topic needs
# to pass, and that keep a stray file (one 10 MB line) from costing minutes and gigabytes.
MAX_ALIGNMENT_TEXTS = 100_000
MAX_ALIGNMENT_CHARS = 1_000_000


def check_alignment(alignment: list[str]) -> list[str]:
    """``alignment`` if it is within :data:`MAX_ALIGNMENT_TEXTS` texts of at most
    :data:`MAX_ALIGNMENT_CHARS` characters each (checked before the model runs)."""
    if len(alignment) > MAX_ALIGNMENT_TEXTS:
        raise ValueError(
            f"The alignment set holds {len(alignment):,} texts, more than the "
            f"{MAX_ALIGNMENT_TEXTS:,} a fit reads at once: give a sample of them (a few hundred "
            "typical texts describe a topic)."
        )
    for number, text in enumerate(alignment, start=1):
        if len(text) > MAX_ALIGNMENT_CHARS:
            raise ValueError(
                f"Alignment text {number} is {len(text):,} characters long, more than the "
                f"{MAX_ALIGNMENT_CHARS:,} an alignment text may have (the fit reads its first "
                "report_max_tokens tokens): cut it, or split it into several texts."
            )
    return alignment


def _taking(option: str) -> str:
    return next(name for name, rule in REGISTRY.items() if option in rule.option_names())


def checkpointing(
    path: str | Path | None, every: int | None, resume: bool
) -> Checkpointing | None:
    if path is None:
        if every is not None or resume:
            raise ValueError("checkpoint_every and resume need checkpoint=PATH (--checkpoint).")
        return None
    if every is not None and every < 1:
        raise ValueError(f"checkpoint_every must be a positive number of prompts, got {every}.")
    path = Path(path).expanduser()
    check_writable(path.parent)  # now, not when the first sums are due
    return Checkpointing(path, every or CHUNK, resume)
