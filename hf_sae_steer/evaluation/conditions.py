"""What an evaluation compares: conditions (a steering, a control or a baseline) and their
points (strengths, norm fractions, fine-tuning epochs).

Additive steerings (``add``, ``clamp`` keeping the error, ``vector``) and their random
controls are placed by *norm fraction* (``docs/method.md`` §6), so a method and its control at
the same point add vectors of the same norm. The other methods are placed by strength.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from hf_sae_steer.steering.names import Method

Baseline = Literal["prefix", "finetune", "ablation"]
Control = Literal["random_latents", "random_vector"]
BASELINES: tuple[Baseline, ...] = ("prefix", "finetune", "ablation")
CONTROLS: tuple[Control, ...] = ("random_latents", "random_vector")
NORM_FRACTIONS = (0.125, 0.25, 0.5, 1.0)
FINETUNE_EPOCHS = (2, 5, 10)


@dataclass(frozen=True)
class Condition:
    """One curve of the evaluation.

    ``method=None`` and no baseline is the unsteered model (``orig``). ``scores`` names the
    artifact (a key of the mapping given to ``evaluate``) it steers with. ``strengths`` or
    ``norm_fractions`` are its points; a baseline's points are ``epochs`` (fine-tuning) or a
    single point (the prefix); directional ablation (of ``scores``' mean difference) is placed
    by ``strengths``. ``options`` are passed on to
    :class:`~hf_sae_steer.steering.steered.SteeredModel` (``edits``, ``latents``, ...).
    """

    name: str
    method: Method | None = None
    scores: str = "default"
    preserve_error: bool = False
    strengths: tuple[float, ...] = (1.0,)
    norm_fractions: tuple[float, ...] = ()
    clamp_value: float | None = None
    control: Control | None = None
    baseline: Baseline | None = None
    epochs: tuple[int, ...] = field(default=FINETUNE_EPOCHS)
    # Further SteeredModel options as (name, value) pairs, e.g. (("edits", (LatentEdit(...),)),)
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def kind(self) -> str:
        if self.baseline is not None:
            return "baseline"
        if self.control is not None:
            return "control"
        return "base" if self.method is None else "steering"

    def points(self) -> list[tuple[float | None, float | None]]:
        """``(strength, norm_fraction)`` of each point; ``(epochs, None)`` for fine-tuning."""
        if self.baseline == "finetune":
            return [(float(e), None) for e in self.epochs]
        if self.baseline == "ablation":  # by strength: 1 projects the direction out
            return [(float(s), None) for s in self.strengths]
        if self.method is None or self.baseline == "prefix":
            return [(None, None)]
        if self.norm_fractions:
            return [(None, rho) for rho in self.norm_fractions]
        return [(float(s), None) for s in self.strengths]


def standard_conditions(
    methods: Sequence[Method],
    *,
    strengths: Sequence[float] = (0.5, 1.0, 2.0),
    preserve_error: Sequence[bool] = (False, True),
    norm_fractions: Sequence[float] = NORM_FRACTIONS,
    baselines: Sequence[Baseline] = (),
    controls: Sequence[Control] = (),
) -> list[Condition]:
    """The usual sweep: ``orig``; every method (``add`` and ``vector`` by norm fraction, the
    others by strength and ``preserve_error``); each baseline; each control by norm fraction."""
    out = [Condition("orig")]
    for method in dict.fromkeys(methods):
        if method == "orig":
            continue
        if method in ("add", "vector"):
            rhos = tuple(norm_fractions)
            out.append(Condition(method, method, preserve_error=True, norm_fractions=rhos))
            continue
        for keep in preserve_error:
            name = method + ("+err" if keep else "")
            out.append(Condition(name, method, preserve_error=keep, strengths=tuple(strengths)))
    for control in controls:
        name = control.replace("_", " ")
        method = "add" if control == "random_latents" else "vector"
        rhos = tuple(norm_fractions)
        out.append(
            Condition(name, method, preserve_error=True, norm_fractions=rhos, control=control)
        )
    for baseline in baselines:
        out.append(Condition(baseline, baseline=baseline))
    return out


def recommended_condition(
    recommended: dict | None, name: str = "recommended", scores: str = "default"
) -> Condition:
    """The artifact's recommended steering as a condition (its method, strength and
    preserve_error); ``swap`` at 1 when the artifact recommends nothing."""
    rec = recommended or {"method": "swap", "strength": 1.0, "preserve_error": False}
    return Condition(
        name,
        rec["method"],
        scores=scores,
        preserve_error=bool(rec["preserve_error"]),
        strengths=(float(rec["strength"]),),
    )
