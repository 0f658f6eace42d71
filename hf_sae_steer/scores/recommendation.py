"""Typed records of what an artifact recommends and what its calibration measured.

:class:`Recommendation` is the steering a rule's scores are meant for; :class:`Calibration`
holds the mean hidden-state norms that turn norm fractions into strengths and, when the fit
measured it, the :class:`FluencyCalibration` curve. Both read and write the JSON of
``steering_config.json`` unchanged (the same keys in the same order, unknown keys kept), so
every artifact written by 0.2 or 0.3 loads and saves the same. For one release they also
answer ``rec["method"]`` and ``rec.get(...)`` as the dicts they replace did.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any


class _ReadsLikeADict:
    """Mapping-style reads (``x["key"]``, ``x.get``, ``in``) over :meth:`to_json`'s keys."""

    def to_json(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_json(cls, data: Any) -> Any:
        """The record of ``data`` (its JSON object; itself; ``None`` stays ``None``), keeping
        the keys this version does not know in ``extra``."""
        if data is None or isinstance(data, cls):
            return data
        known, extra = _split(cls, data)
        return cls(**known, extra=extra)

    def __getitem__(self, key: str) -> Any:
        return self.to_json()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.to_json().get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self.to_json()

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_json())

    def keys(self) -> Any:
        return self.to_json().keys()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, _ReadsLikeADict):
            return type(self) is type(other) and self.to_json() == other.to_json()
        if isinstance(other, Mapping):
            return self.to_json() == dict(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable, like the dicts it replaces


def _split(cls: type, data: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    names = {f.name for f in dataclasses.fields(cls) if f.name != "extra"}
    known = {k: v for k, v in data.items() if k in names}
    return known, {k: v for k, v in data.items() if k not in names}


def _fields_json(record: Any, omitted_when_none: tuple[str, ...] = ()) -> dict[str, Any]:
    """A record's fields in their order, then the keys it kept from the JSON it was read from."""
    fields = {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}
    fields.pop("extra")
    for name in omitted_when_none:
        if fields[name] is None:
            fields.pop(name)
    return {**fields, **record.extra}


@dataclass(eq=False)
class Recommendation(_ReadsLikeADict):
    """The steering an artifact recommends: ``method`` at ``strength`` with ``preserve_error``.

    ``norm_fraction`` is the added vector's size as a fraction of a typical hidden state's
    (``None`` for non-additive methods), ``calibrated`` whether the strength was measured on
    the model (``docs/method.md`` §6), ``why`` one line for people. ``extra`` keeps keys this
    version does not know, so that they survive a load and a save.
    """

    method: str
    strength: float
    preserve_error: bool
    norm_fraction: float | None = None
    why: str = ""
    calibrated: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "method": self.method,
            "strength": self.strength,
            "preserve_error": self.preserve_error,
            "norm_fraction": self.norm_fraction,
            "why": self.why,
        }
        if self.calibrated is not None:
            out["calibrated"] = self.calibrated
        return {**out, **self.extra}


    def calibrated_to(self, fluency: FluencyCalibration) -> Recommendation:
        """This steering at the strength its fluency calibration chose."""
        return dataclasses.replace(
            self,
            strength=fluency.strength,
            norm_fraction=fluency.norm_fraction,
            calibrated=True,
            why=(
                f"the largest strength whose continuations of {fluency.prompts} neutral prompts "
                f"stay under {fluency.target_ratio:g}x the unsteered model's perplexity"
            ),
        )


@dataclass(eq=False)
class FluencyCalibration(_ReadsLikeADict):
    """A measured fluency curve (``docs/method.md`` §6): ``curve`` holds
    ``{norm_fraction, strength, perplexity_ratio}`` per measured point (and, in newer
    artifacts, ``continuations``: the pairs averaged); the chosen point is the largest strength of
    ``method`` whose perplexity ratio stays under ``target_ratio`` on ``prompts`` neutral
    prompts. ``search`` says how the points were chosen (``"secant"`` or ``"grid"``) and
    ``samples`` how many continuations per prompt a point has; both are ``None`` (and left out
    of the JSON) for older artifacts, which measured the whole grid."""

    method: str
    target_ratio: float
    norm_fraction: float
    strength: float
    prompts: int
    curve: list[dict[str, Any]] = field(default_factory=list)
    search: str | None = None
    samples: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        # absent from older artifacts: saved as they were
        return _fields_json(self, omitted_when_none=("search", "samples"))



@dataclass(eq=False)
class AwayCalibration(_ReadsLikeADict):
    """A measured suppression curve (``docs/method.md`` §9): ``curve`` holds ``{strength,
    neutral_forced_ratio, topic_forced_ratio}`` per point (the teacher-forced perplexity ratio
    on continuations of ``neutral_prompts`` neutral prompts: the side effect; on the topic's
    own words after ``inviting_prompts`` prompts that invite it: the effect); the chosen
    ``strength`` of ``method`` is the largest whose neutral ratio stays under ``target_ratio``.
    Early 0.4 development artifacts have sampled readings instead (``neutral_ratio``,
    ``topic_drop``), and are read the same way."""

    method: str
    target_ratio: float
    strength: float
    neutral_prompts: int
    inviting_prompts: int
    curve: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return _fields_json(self)

    @staticmethod
    def neutral_ratio_of(point: Mapping[str, Any]) -> float | None:
        """The side effect a point's strength is chosen by: its teacher-forced neutral ratio,
        else (an artifact of 0.4.0) its sampled one."""
        forced = point.get("neutral_forced_ratio")
        return forced if forced is not None else point.get("neutral_ratio")

    @staticmethod
    def describe_point(point: Mapping[str, Any]) -> str:
        """``x1.04 neutral, x1.31 topic text``: the side effect, then the effect (the topic
        words' perplexity ratio; an early 0.4 artifact: the drop of the topic's similarity)."""
        text = f"x{AwayCalibration.neutral_ratio_of(point):.2f} neutral"
        if point.get("topic_forced_ratio") is not None:
            return f"{text}, x{point['topic_forced_ratio']:.2f} topic text"
        if point.get("topic_drop") is not None:
            return f"{text}, {point['topic_drop']:+.3f} topic"
        return text


@dataclass(eq=False)
class Calibration(_ReadsLikeADict):
    """What turns norm fractions into strengths: the mean norm of a reference token's hidden
    state in the SAE's input space (``mean_norm``) and in the raw residual stream
    (``mean_norm_raw``), and the measured :class:`FluencyCalibration` and
    :class:`AwayCalibration`, if any."""

    mean_norm: float | None = None
    mean_norm_raw: float | None = None
    fluency: FluencyCalibration | None = None
    away: AwayCalibration | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.mean_norm is not None:
            out["mean_norm"] = self.mean_norm
        if self.mean_norm_raw is not None:
            out["mean_norm_raw"] = self.mean_norm_raw
        if self.fluency is not None:
            out["fluency"] = self.fluency.to_json()
        if self.away is not None:
            out["away"] = self.away.to_json()
        return {**out, **self.extra}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | Calibration | None) -> Calibration:
        if isinstance(data, Calibration):
            return data
        known, extra = _split(cls, data or {})
        fluency = FluencyCalibration.from_json(known.pop("fluency", None))
        away = AwayCalibration.from_json(known.pop("away", None))
        return cls(**known, fluency=fluency, away=away, extra=extra)

    def __bool__(self) -> bool:
        return bool(self.to_json())
