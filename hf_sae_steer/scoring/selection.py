"""The selection rules by name (``docs/method.md`` §3, §6): which function turns a run's sums
into scores, and what it needs.

- ``seed``, ``support``, ``mean_diff`` (:mod:`~hf_sae_steer.scoring.rules`) need the sums alone;
- ``output`` (:mod:`~hf_sae_steer.scoring.output_aware`) and ``trained``
  (:mod:`~hf_sae_steer.scoring.trained`) also read the model's output on the alignment and
  reference texts, through a :class:`~hf_sae_steer.scoring.objective.TopicMargin`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Literal, get_args

from hf_sae_steer.sae.base import SAE
from hf_sae_steer.scoring.objective import TopicMargin
from hf_sae_steer.scoring.output_aware import output_rule
from hf_sae_steer.scoring.passes import ScoringSums
from hf_sae_steer.scoring.rules import RuleResult, mean_diff_rule, seed_rule, support_rule
from hf_sae_steer.scoring.trained import trained_rule

Rule = Literal["seed", "support", "mean_diff", "output", "trained"]
RULES: tuple[Rule, ...] = get_args(Rule)
# Chosen on the benchmark's tuning topics (docs/benchmark.md).
DEFAULT_RULE: Rule = "mean_diff"
DEFAULT_OPTIONS: dict[str, dict[str, Any]] = {"mean_diff": {}}
OUTPUT_RULES: tuple[Rule, ...] = ("output", "trained")  # they need a TopicMargin
# Rules that pick latents with weights (the artifact's `latents`/`weights`): steered with `add`.
ADDITIVE_RULES: tuple[Rule, ...] = ("mean_diff", "output", "trained")

RULE_FUNCTIONS: dict[str, Callable[..., RuleResult]] = {
    "seed": seed_rule,
    "support": support_rule,
    "mean_diff": mean_diff_rule,
    "output": output_rule,
    "trained": trained_rule,
}


def apply_rule(
    rule: str, sums: ScoringSums, sae: SAE, *, margin: TopicMargin | None = None, **options: Any
) -> RuleResult:
    """Run selection rule ``rule`` (one of :data:`RULES`) with its ``options``; the output rules
    need ``margin``."""
    if rule not in RULE_FUNCTIONS:
        raise ValueError(f"Unknown rule {rule!r}; use one of {', '.join(RULES)}.")
    function = RULE_FUNCTIONS[rule]
    given = dict(options)
    if rule in OUTPUT_RULES:
        if margin is None:
            raise ValueError(f"Rule {rule!r} reads the model's output: fit it with fit().")
        given["margin"] = margin
    try:
        inspect.signature(function).bind(sums, sae, **given)
    except TypeError as error:
        raise ValueError(f"Bad options {sorted(options)} for rule {rule!r}: {error}") from None
    return function(sums, sae, **given)
