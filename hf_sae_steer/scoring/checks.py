"""What a fit checks before any work: every option, with messages that name the argument and
its CLI flag, and the checkpoint's folder."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hf_sae_steer.folders import check_writable
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
