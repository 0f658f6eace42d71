"""The uncertainty report: how far a set of feature scores can be trusted (``docs/method.md``
§4)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from hf_sae_steer.scores.effect import SteeringEffect

TOP_K = 20
THIN_SUPPORT = 2  # a top latent seen on this many reference prompts or fewer rests on anecdote
# Warn once more than this share of the top latents is thin: 3 of a mean_diff fit's 10 already
# carry a good part of the steering (the shipped demo's artifact has 2).
THIN_SHARE = 0.25
MIN_ALIGNMENT_TEXTS = 4  # fewer distinct texts describe themselves, not a topic


@dataclass
class ScoreReport:
    """How far the scores can be trusted (see :meth:`FeatureScores.report`).

    ``effective_latents`` is ``exp(entropy)`` of ``s / sum(s)``: the number of equally scored
    latents that would carry the same score mass. ``top_k`` is the number of top latents the
    next figures look at (20, or fewer when fewer latents have a score): ``top_firing`` how many
    fire on the alignment set, ``thin_support`` how many fire on at most two reference prompts.
    ``delta_explained`` (``mean_diff`` only) is the share of the alignment-minus-reference
    direction that the chosen decoder rows reproduce. Figures that need the model are ``None``
    for scores imported from CSV. ``effect``: what the recommended steering does in words, when
    the artifact records it (printed; stored beside the report, not in it).
    """

    coverage: float
    n_fired: int
    d_sae: int
    effective_latents: float
    fvu: float | None = None
    top_k: int = TOP_K
    top_firing: int | None = None
    thin_support: int | None = None
    delta_explained: float | None = None
    warnings: list[str] = field(default_factory=list)
    effect: SteeringEffect | None = field(default=None, compare=False)
    steering: list[str] = field(default_factory=list, compare=False)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(replace(self, effect=None))
        del data["effect"], data["steering"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScoreReport:
        skip = ("effect", "steering")
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data and k not in skip})

    def __str__(self) -> str:
        lines = [
            f"coverage           {self.coverage:.1%} ({self.n_fired} of {self.d_sae} latents fire)",
            f"effective latents  {self.effective_latents:.1f} (exp entropy of s / sum s)",
        ]
        if self.fvu is not None:
            lines.append(f"FVU on alignment   {self.fvu:.3f}")
        if self.top_firing is not None:
            label = f"top-{self.top_k} firing".ljust(19)
            lines.append(f"{label}{self.top_firing} on the alignment set")
        if self.thin_support is not None:
            lines.append(
                f"thin support       {self.thin_support} of the top {self.top_k} fire on "
                f"<= {THIN_SUPPORT} reference prompts"
            )
        if self.delta_explained is not None:
            lines.append(
                f"target explained   {self.delta_explained:.1%} of the alignment direction"
            )
        lines += [f"warning: {w}" for w in self.warnings]
        lines += self.steering
        if self.effect is not None:
            # The measures of the whole steering; effect.format() adds each chosen latent's.
            lines.append("What the recommended steering does, in words:")
            lines.append(self.effect.format(latents=0))
        return "\n".join(lines)


def build_report(
    scores: Tensor,
    coverage: float,
    fvu: float | None = None,
    align_counts: Tensor | None = None,
    ref_counts: Tensor | None = None,
    delta_explained: float | None = None,
    top_k: int | None = None,
    alignment_texts: tuple[int, int] | None = None,
) -> ScoreReport:
    """The uncertainty report of a score vector; low-quality cases get a warning saying why.

    ``top_k`` is how many top latents the figures look at (default 20, at most those that fired).
    ``alignment_texts``: how many distinct texts the alignment set holds, and how many it was
    given; fewer than :data:`MIN_ALIGNMENT_TEXTS` distinct ones get a warning, whatever the rule.
    """
    s = scores.double()
    d_sae = s.numel()
    n_fired = round(coverage * d_sae)
    total = s.sum()
    p = s[s > 0] / total if total > 0 else s[:0]
    effective = float(torch.exp(-(p * p.log()).sum())) if p.numel() else 0.0
    top_k = min(top_k or TOP_K, max(n_fired, 1))
    top = torch.topk(s, top_k).indices
    top_firing = None if align_counts is None else int((align_counts[top] > 0).sum())
    thin = None if ref_counts is None else int((ref_counts[top] <= THIN_SUPPORT).sum())
    notes = []
    if alignment_texts is not None and alignment_texts[0] < MIN_ALIGNMENT_TEXTS:
        distinct, given = alignment_texts
        held = f"{distinct} distinct text{'s' if distinct != 1 else ''}"
        held += f" (of {given} given)" if given != distinct else ""
        notes.append(
            f"The alignment set holds only {held}: the scores describe "
            f"{'that text' if distinct == 1 else 'those texts'}, not a topic. Give at least "
            f"{MIN_ALIGNMENT_TEXTS} different example texts of the topic (dozens are better)."
        )
    if total == 0:  # calibration.recommend then recommends no change
        cause = "No latent fired on the reference set" if n_fired == 0 else "No latent scored"
        notes.append(
            f"{cause}: every score is 0, so the recommended steering is no change (method "
            "'orig'); swap would keep no latent and erase the hidden state."
        )
    elif n_fired == 0:
        notes.append(
            "No latent fired on the reference set (coverage 0): the SAE does not represent it, "
            "and the chosen latents rest on the decoder alone."
        )
    elif coverage < 0.3:
        notes.append(
            f"Coverage is {coverage:.1%} (< 30%): the SAE represents the reference set poorly, so "
            "most latents carry no score and steering can only act through the few that fired."
        )
    if fvu is not None and fvu > 0.5:
        notes.append(
            f"The SAE's fraction of variance unexplained on the alignment set's hidden states is "
            f"{fvu:.2f} (> 0.5): steering edits a poor reconstruction of the target texts."
        )
    if top_firing is not None and n_fired and top_firing < top_k / 2:
        notes.append(
            f"Only {top_firing} of the {top_k} highest-scoring latents fire on the alignment set: "
            "the scores favour latents the target texts do not use, so steering may be weak."
        )
    if thin is not None and n_fired and thin > top_k * THIN_SHARE:
        notes.append(
            f"{thin} of the {top_k} highest-scoring latents fire on only {THIN_SUPPORT} or fewer "
            "reference prompts: what the reference set says of them rests on anecdote. A larger "
            "reference set (or rule='support', which ranks a latent high only once it has "
            "support) gives firmer scores."
        )
    if delta_explained is not None and delta_explained < 0.25:
        notes.append(
            f"The chosen latents reproduce only {delta_explained:.0%} of the direction from the "
            "reference set to the alignment set: the SAE represents this target poorly (more "
            "latents, k, or another SAE may help)."
        )
    return ScoreReport(
        coverage, n_fired, d_sae, effective, fvu, top_k, top_firing, thin, delta_explained, notes
    )
