"""The ``steering`` field of a request: a list of items (a single item may be given bare),
validated into frozen :class:`SteeringItem` records. Pure Python (no torch, no HTTP).

- ``{"concept": "medical", "strength": 4 | "recommended" | "calibrated", "method": "add",
  "positions": "all" | "prompt" | "generated", "preserve_error": true,
  "direction": "toward" | "away"}``: a concept of the server's library, steered as
  ``SteeredModel(model, sae, scores=artifact, ...)`` would (unset fields: the artifact's
  recommended steering, exactly as SteeredModel chooses them);
- ``{"latents": {"12": 3.0, "40": 1.5}, "strength": 1, "layer": 2, "site": "resid_post"}``:
  method ``add`` with your own latents and weights on one of the server's SAEs (``layer`` /
  ``site`` pick the SAE when it serves several); the weights' signs say which way;
- ``{"vector": "medical", "strength": ..., "direction": ...}``: method ``vector`` with that
  concept's steering vector (its ``delta_raw``; no SAE pass).

No steering (absent, ``null`` or ``[]``) is the base model. Strengths are finite numbers within
±:data:`~hf_sae_steer.steering.names.MAX_STRENGTH` (the library's bound), ``"recommended"``
(the artifact's recommended strength; its method only) or ``"calibrated"`` (as
``SteeredModel(strength="calibrated")``). ``direction`` (default ``"toward"``) is
``SteeringSpec.direction``: ``"away"`` takes the topic out of the text.

The vocabulary (methods, positions, directions, strength words, sites) is the library's own
(:mod:`hf_sae_steer.steering.names`, :mod:`hf_sae_steer.sites.names`), never a copy.
:meth:`SteeringItem.to_dict` round-trips through :func:`parse_steering`, so steering can travel
as JSON to an engine's workers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from hf_sae_steer.serving.errors import RequestError
from hf_sae_steer.serving.limits import DEFAULT_LIMITS, Limits
from hf_sae_steer.sites.names import SITES
from hf_sae_steer.steering.names import (
    DIRECTIONS,
    MAX_STRENGTH,
    METHODS,
    POSITIONS,
    STRENGTH_WORDS,
)

ITEM_KEYS = {
    "concept": {"concept", "strength", "method", "positions", "preserve_error", "direction"},
    "latents": {"latents", "strength", "positions", "layer", "site", "method"},
    "vector": {"vector", "strength", "positions", "method", "direction"},
}


@dataclass(frozen=True)
class SteeringItem:
    """One validated steering item. Exactly one of ``concept``, ``latents``, ``vector`` is set;
    ``None`` fields mean "as the artifact recommends" (see the module docstring)."""

    concept: str | None = None
    latents: tuple[tuple[int, float], ...] | None = None
    vector: str | None = None
    method: str | None = None
    strength: float | str | None = None
    positions: str = "all"
    preserve_error: bool | None = None
    layer: int | None = None
    site: str | None = None
    direction: str = "toward"

    @property
    def kind(self) -> Literal["concept", "latents", "vector"]:
        if self.concept is not None:
            return "concept"
        return "latents" if self.latents is not None else "vector"

    def to_dict(self) -> dict[str, Any]:
        """The JSON form :func:`parse_steering` reads back (unset fields left out)."""
        out: dict[str, Any] = {}
        if self.latents is not None:
            out["latents"] = {str(i): w for i, w in self.latents}
        for name in ("concept", "vector", "method", "strength", "preserve_error", "layer",
                     "site"):  # fmt: skip
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        out["positions"] = self.positions
        if self.direction != "toward":  # left out at its default: older keys stay the same
            out["direction"] = self.direction
        return out


def parse_steering(value: Any, limits: Limits = DEFAULT_LIMITS) -> tuple[SteeringItem, ...]:
    """The ``steering`` field: ``None``/``[]`` (the base model), one item, or a list of items."""
    if value is None:
        return ()
    items = [value] if isinstance(value, Mapping) else value
    if not isinstance(items, list):
        raise RequestError(
            'steering must be a list of items like {"concept": "medical"}.', param="steering"
        )
    if len(items) > limits.max_steering:
        raise RequestError(
            f"steering has {len(items)} items; at most {limits.max_steering} are allowed.",
            param="steering",
        )
    return tuple(parse_item(raw, f"steering[{i}]", limits) for i, raw in enumerate(items))


def parse_item(raw: Any, param: str, limits: Limits = DEFAULT_LIMITS) -> SteeringItem:
    """One item; ``param`` names it in errors (``steering[0]``)."""
    if not isinstance(raw, Mapping):
        raise RequestError(f'{param} must be an object like {{"concept": "medical"}}.', param=param)
    kinds = [k for k in ("concept", "latents", "vector") if k in raw]
    if len(kinds) != 1:
        raise RequestError(f"{param} needs exactly one of concept, latents or vector.", param=param)
    kind = kinds[0]
    unknown = sorted(set(raw) - ITEM_KEYS[kind])
    if unknown:
        raise RequestError(
            f"{param} has unknown field(s) {', '.join(unknown)}; a {kind} item takes "
            f"{', '.join(sorted(ITEM_KEYS[kind]))}.",
            param=f"{param}.{unknown[0]}",
        )
    method = raw.get("method")
    if method is not None and (not isinstance(method, str) or method not in METHODS):
        raise RequestError(
            f"{param}.method {method!r} is unknown; use one of {', '.join(METHODS)}.",
            param=f"{param}.method",
        )
    fixed = {"latents": "add", "vector": "vector"}.get(kind)
    if fixed is not None and method not in (None, fixed):
        raise RequestError(
            f"{param}: a {kind} item steers with method {fixed!r}, not {method!r}.",
            param=f"{param}.method",
        )
    positions = _choice(raw.get("positions", "all"), POSITIONS, f"{param}.positions")
    direction = _choice(raw.get("direction", "toward"), DIRECTIONS, f"{param}.direction")
    preserve = raw.get("preserve_error")
    if preserve is not None and not isinstance(preserve, bool):
        raise RequestError(f"{param}.preserve_error must be true or false.", param=param)
    return SteeringItem(
        concept=_name(raw, "concept", param),
        latents=_latents(raw["latents"], param, limits) if kind == "latents" else None,
        vector=_name(raw, "vector", param),
        method=fixed or method,
        strength=parse_strength(raw.get("strength"), f"{param}.strength"),
        positions=positions,
        preserve_error=preserve,
        layer=_int_or_none(raw.get("layer"), f"{param}.layer"),
        site=_site(raw.get("site"), f"{param}.site"),
        direction=direction,
    )


def parse_strength(value: Any, param: str) -> float | str | None:
    """A strength: a finite number within ±MAX_STRENGTH, or one of the strength words."""
    if value is None or value in STRENGTH_WORDS:
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RequestError(
            f"{param} must be a number or one of {', '.join(STRENGTH_WORDS)}, got {value!r}.",
            param=param,
        )
    value = float(value)
    if not math.isfinite(value) or abs(value) > MAX_STRENGTH:
        raise RequestError(
            f"{param} must be a finite number between -{MAX_STRENGTH:g} and {MAX_STRENGTH:g}, "
            f"got {value:g}.",
            param=param,
        )
    return value


def _choice(value: Any, allowed: tuple[str, ...], param: str) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise RequestError(
            f"{param} {value!r} is unknown; use one of {', '.join(allowed)}.", param=param
        )
    return value


def _name(raw: Mapping[str, Any], key: str, param: str) -> str | None:
    if key not in raw:
        return None
    value = raw[key]
    if not isinstance(value, str) or not value or len(value) > 200:
        raise RequestError(f"{param}.{key} must be a concept name (a string).", param=param)
    return value


def _latents(value: Any, param: str, limits: Limits) -> tuple[tuple[int, float], ...]:
    if not isinstance(value, Mapping) or not value:
        raise RequestError(
            f"{param}.latents must be a non-empty object {{latent: weight}}.", param=param
        )
    if len(value) > limits.max_latents:
        raise RequestError(
            f"{param}.latents has {len(value)} entries; at most {limits.max_latents}.", param=param
        )
    out = []
    for key, weight in value.items():
        try:
            index = int(key)
        except (TypeError, ValueError):
            index = -1
        if index < 0 or str(index) != str(key).strip():
            raise RequestError(
                f"{param}.latents: {key!r} is not a latent index (a whole number >= 0).",
                param=param,
            )
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            raise RequestError(f"{param}.latents[{key}] must be a number.", param=param)
        if not math.isfinite(weight) or abs(weight) > MAX_STRENGTH:
            raise RequestError(
                f"{param}.latents[{key}] must be finite and within ±{MAX_STRENGTH:g}.",
                param=param,
            )
        out.append((index, float(weight)))
    return tuple(out)


def _int_or_none(value: Any, param: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise RequestError(f"{param} must be a whole number (a block index).", param=param)
    return int(value)


def _site(value: Any, param: str) -> str | None:
    if value is None:
        return None
    if value not in SITES:
        raise RequestError(
            f"{param} {value!r} is unknown; use one of {', '.join(SITES)}.", param=param
        )
    return value
