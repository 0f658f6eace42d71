"""The score record of a finished run: a rule turns the sums into scores, the rule's recommended
steering, the uncertainty report and the provenance go beside them."""

from __future__ import annotations

import warnings
from typing import Any

import torch

from hf_sae_steer.sae.base import SAE
from hf_sae_steer.scores.recommendation import Calibration
from hf_sae_steer.scores.record import FeatureScores
from hf_sae_steer.scores.uncertainty import build_report
from hf_sae_steer.scoring.away import recommend_away, topic_gate, topic_latents
from hf_sae_steer.scoring.rules import apply_rule, recommend
from hf_sae_steer.scoring.rules.objective import TopicMargin
from hf_sae_steer.scoring.walk.passes import ScoringSums
from hf_sae_steer.steering.names import MAX_STRENGTH


def from_sums(
    sums: ScoringSums,
    sae: SAE,
    *,
    rule: str,
    rule_options: dict[str, Any],
    norm_fraction: float,
    warn: bool = True,
    margin: TopicMargin | None = None,
    alignment_texts: tuple[int, int] | None = None,
    record_class: type[FeatureScores] = FeatureScores,
    **fields: Any,
) -> FeatureScores:
    """The score record of a finished run: the rule's scores, its recommended steering, the
    uncertainty report (warned about, once, when ``warn``) and provenance ``fields``.
    ``alignment_texts``: (distinct, given) alignment texts, for the report's warning on too few."""
    broken = sums.non_finite()
    if broken is not None:  # NaN/inf never reach scores: the seed rule would score them 1
        raise ValueError(
            f"The scoring sums are not finite ({broken} holds NaN or inf): the model's hidden "
            "states at the site overflow. Score the model in float32."
        )
    result = apply_rule(rule, sums, sae, margin=margin, **rule_options)
    coverage = float(sums.fired.double().mean())
    stats = {
        **result.stats,
        "mass": sums.den.float(),
        "ref_fire_counts": sums.ref_prompts,
        "align_fire_counts": sums.align_prompts,
        "typical_activation": sums.typical_activation().float(),
    }
    picked = int((result.scores > 0).sum()) if "latents" in result.stats else None
    report = build_report(
        result.scores,
        coverage,
        sums.fvu(),
        sums.align_prompts,
        sums.ref_prompts,
        result.delta_explained,
        top_k=picked,
        alignment_texts=alignment_texts,
    )
    if warn:
        for note in report.warnings:
            warnings.warn(note, stacklevel=3)
    try:
        recommended = recommend(rule, result, stats, sae, sums.mean_norm(), norm_fraction)
    except ValueError:  # nothing to steer with (no latent fired, or no direction)
        recommended = None
    if recommended is not None and abs(recommended.strength) > MAX_STRENGTH:
        raise ValueError(
            f"The recommended {recommended.method} steering would need strength "
            f"{recommended.strength:.3g} for norm fraction {norm_fraction:g}, beyond the "
            f"±{MAX_STRENGTH:g} that steering accepts: the SAE's decoder rows are tiny next to "
            "the hidden states. Pass a smaller norm_fraction (--norm-fraction)."
        )
    away = topic_latents(sums)
    if len(away):
        stats["away_latents"] = away
    gate = topic_gate(sums)
    if gate is not None:
        stats["away_gate_latents"], stats["away_gate_log_odds"] = gate[0], gate[1]
        stats["away_gate_bias"] = torch.tensor([gate[2]])
    options = {**fields.pop("options", {}), "rule_options": result.options}
    return record_class(
        scores=result.scores,
        coverage=coverage,
        sae_fingerprint=sae.fingerprint(),
        sae_spec=sae.cfg.spec,
        reference_size=int(sums.ref_n),
        alignment_size=int(sums.align_n),
        options=options,
        stats=stats,
        quality=report,
        rule=rule,
        recommended=recommended,
        recommended_away=recommend_away(
            away, has_direction="delta_raw" in stats, gated="away_gate_latents" in stats
        ),
        calibration=Calibration(sums.mean_norm(), sums.mean_norm(raw=True)),
        **fields,
    )
