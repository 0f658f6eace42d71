"""What every selection rule shares (``docs/method.md`` §3, §6): the :class:`RuleResult` a rule
returns, the :class:`SelectionRule` entry that registers it, the direction from the reference
mean to the alignment mean, non-negative matching pursuit, and the steering a rule recommends.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from hf_sae_steer.sae.base import SAE, SparseCode
from hf_sae_steer.scores.recommendation import Recommendation
from hf_sae_steer.scoring.walk.passes import ScoringSums
from hf_sae_steer.steering.strength import added_vector, clamp_values, strength_for

# mean_diff: a |delta| below this fraction of a token's typical norm is float noise (the same
# prompts in both sets, summed in another order), not a direction.
NO_DIRECTION = 1e-4


@dataclass
class RuleResult:
    """What a rule produces: scores in [0, 1], tensors for the artifact, options it used."""

    scores: Tensor
    stats: dict[str, Tensor] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    delta_explained: float | None = None


def normalise(raw: Tensor, fired: Tensor) -> Tensor:
    """``s = 1 - (r - min r) / max(r - min r)`` over the latents that fired; 0 for the others.

    When every fired latent has the same ``r`` they are all equally close: each gets 1.
    """
    scores = torch.zeros(raw.shape, dtype=torch.float64)
    if fired.any():
        r = raw.double()[fired]
        r = r - r.min()
        top = r.max()
        scores[fired] = 1 - r / top if top > 0 else 1.0
    return scores.float()


def check_direction(sums: ScoringSums, rule: str = "mean_diff") -> tuple[Tensor, Tensor]:
    """``Δ`` (the SAE's input space) and ``Δ_raw``: alignment minus reference mean hidden state;
    an error naming ``rule`` when there is none (no tokens, not finite, or float noise)."""
    for name, tokens in (("alignment", sums.align_tokens), ("reference", sums.ref_tokens)):
        if int(tokens) == 0:
            raise ValueError(
                f"{rule}: the {name} set has no tokens to score (every text is a single token, "
                "and a text's first token is skipped): give longer texts, a sentence or more."
            )
    delta = sums.alignment_mean() - sums.reference_mean()
    delta_raw = sums.alignment_mean(raw=True) - sums.reference_mean(raw=True)
    size, typical = float(delta.norm()), sums.mean_norm()
    if not math.isfinite(size) or not math.isfinite(typical):
        raise ValueError(
            f"{rule}: the direction from the reference mean to the alignment mean is not "
            "finite (NaN or inf hidden states at the site); score the model in float32."
        )
    if size <= NO_DIRECTION * typical:
        raise ValueError(
            f"{rule}: the alignment set's mean hidden state equals the reference set's "
            f"(|delta| = {size:.3g} against a typical norm of {typical:.3g}): there is no "
            "direction to steer towards. Give alignment texts of the topic, not the reference set."
        )
    return delta, delta_raw


# -- non-negative orthogonal matching pursuit ----------------------------------------------
def nn_omp(rows: Tensor, target: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Pick up to ``k`` of ``rows`` [n, d] whose non-negative combination best fits ``target``.

    Greedy: add the row most positively aligned with the residual (by cosine), refit all weights
    by non-negative least squares, repeat; stop early when no row points along the residual.
    Returns ``(indices, weights, residual)``; rows whose refitted weight is 0 are dropped.
    """
    rows, target = rows.double(), target.double()
    norms = rows.norm(dim=1).clamp_min(1e-12)
    chosen: list[int] = []
    weights = torch.zeros(0, dtype=torch.float64)
    residual = target.clone()
    for _ in range(k):
        cosine = (rows @ residual) / norms
        if chosen:
            cosine[chosen] = -math.inf
        best = int(cosine.argmax())
        if not cosine[best] > 1e-12:
            break
        chosen.append(best)
        weights = nnls(rows[chosen].T, target)
        residual = target - rows[chosen].T @ weights
    keep = weights > 0
    index = torch.tensor(chosen, dtype=torch.int64)[keep] if chosen else torch.zeros(0).long()
    return index, weights[keep], residual


def nnls(a: Tensor, b: Tensor, tol: float = 1e-10) -> Tensor:
    """``argmin_{x >= 0} ||a x - b||`` by Lawson and Hanson's active-set method (small ``a``)."""
    m = a.shape[1]
    x = torch.zeros(m, dtype=torch.float64)
    passive = torch.zeros(m, dtype=torch.bool)
    for _ in range(3 * m + 10):
        gradient = a.T @ (b - a @ x)
        candidates = (~passive) & (gradient > tol)
        if not candidates.any():
            break
        passive[int(torch.where(candidates, gradient, -math.inf).argmax())] = True
        while True:
            trial = torch.zeros(m, dtype=torch.float64)
            trial[passive] = torch.linalg.lstsq(a[:, passive], b.unsqueeze(1)).solution.squeeze(1)
            if (trial[passive] > tol).all():
                x = trial
                break
            blocking = passive & (trial <= tol)
            step = (x[blocking] / (x[blocking] - trial[blocking])).min()
            x = x + step * (trial - x)
            passive &= x > tol
            x[~passive] = 0.0
            if not passive.any():
                break
    return x


# -- the registry entry ---------------------------------------------------------------------
@dataclass(frozen=True)
class SelectionRule:
    """One selection rule: its name, its ``Options`` dataclass (every option a keyword of
    ``select``, validated by ``Options(...).check(d_sae)`` before any work), whether it reads
    the model's output through a :class:`~hf_sae_steer.scoring.rules.objective.TopicMargin`
    (``needs_margin``), and the steering its scores are meant for (``recommend``)."""

    name: str
    select: Callable[..., RuleResult]
    options: type
    recommend: Callable[[RuleResult, dict[str, Tensor], SAE, float, float], Recommendation]
    needs_margin: bool = False

    def option_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self.options))


def recommendation(
    method: str, strength: float, *, preserve_error: bool, norm_fraction: float | None
) -> Recommendation:
    """A recommended steering, with its one-line reason."""
    why = (
        f"strength makes the added vector {norm_fraction:g} x the mean norm of a reference "
        "token's hidden state"
        if norm_fraction is not None
        else "the reference method at full strength"
    )
    return Recommendation(method, strength, preserve_error, norm_fraction, why)


def _additive(method: str, u: Tensor, mean_norm: float, norm_fraction: float) -> Recommendation:
    strength = strength_for(norm_fraction, u, mean_norm)
    return recommendation(method, strength, preserve_error=True, norm_fraction=norm_fraction)


def recommend_add(
    result: RuleResult, stats: dict[str, Tensor], sae: SAE, mean_norm: float, norm_fraction: float
) -> Recommendation:
    """Rules that pick latents with weights: ``add`` them, error kept, at norm fraction ``ρ``."""
    u = added_vector("add", sae, latents=SparseCode(stats["latents"], stats["weights"]))
    return _additive("add", u, mean_norm, norm_fraction)


def recommend_clamp(
    result: RuleResult, stats: dict[str, Tensor], sae: SAE, mean_norm: float, norm_fraction: float
) -> Recommendation:
    """Rules that only rank latents: ``clamp`` the 5 top ones by their typical activations."""
    clamp = clamp_values(result.scores, 5, None, stats.get("typical_activation"))
    return _additive("clamp", added_vector("clamp", sae, clamp=clamp), mean_norm, norm_fraction)


def recommend_swap(
    result: RuleResult, stats: dict[str, Tensor], sae: SAE, mean_norm: float, norm_fraction: float
) -> Recommendation:
    """The reference's own method, ``swap`` at strength 1."""
    return recommendation("swap", 1.0, preserve_error=False, norm_fraction=None)


# Latents a pursuit chooses: 10, chosen on the benchmark's tuning topics (docs/benchmark.md);
# 0.2 used 5, which fell behind CAA at matched fluency.
PURSUIT_K = 10


@dataclass(frozen=True)
class PursuitOptions:
    """``k``: how many decoder rows write the mean difference (``mean_diff``, ``output``)."""

    k: int = PURSUIT_K

    def check(self, d_sae: int | None = None) -> None:
        k = self.k
        if isinstance(k, bool) or not isinstance(k, int) or k < 1 or (d_sae and k > d_sae):
            top = f"d_sae={d_sae}" if d_sae else "d_sae"
            raise ValueError(f"k (--k) must be a whole number from 1 to {top}, got {k!r}.")
