"""The concept library: named score artifacts, the SAEs they belong to, and the one place where a
request's steering items become per-row edits (:class:`ResolvedSteering`).

A concept is a :class:`~hf_sae_steer.scores.record.FeatureScores` artifact under a name
(``--concept medical=PATH_OR_HUB_ID``, or every artifact folder of ``--concepts-dir``, named by
its folder). Each concept is matched at start-up to the served SAE it was fitted on (by the
artifact's SAE fingerprint; an artifact that fits none is refused then, not per request).

Resolving an item builds exactly what ``SteeredModel(model, sae, scores=artifact, method=...,
strength=..., positions=..., preserve_error=..., direction=...)`` builds: :func:`resolve_spec` on a
:class:`SteeringSpec` (the site from the one resolver, the recommended method and strength, the
calibrated strengths of ``add``/``vector``), so a request run alone gives SteeredModel's tokens.
Resolved edits are cached by item (LRU), so requests with the same steering share the same
:class:`~hf_sae_steer.steering.batched.SiteEdit` objects and run as one group in a batch.

Errors in an item (an unknown concept, a method the artifact cannot serve, a strength the
library refuses) raise :class:`~hf_sae_steer.serving.errors.RequestError` (HTTP 400).
"""

from __future__ import annotations

import json
import re
import threading
import warnings
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from hf_sae_steer.sae.base import SAE
from hf_sae_steer.scores.compatibility import check_compatible
from hf_sae_steer.scores.record import CONFIG_FILE, FeatureScores, load_scores
from hf_sae_steer.serving.errors import RequestError
from hf_sae_steer.serving.steering_items import SteeringItem
from hf_sae_steer.sites.layouts import ModelLayout, find_layout
from hf_sae_steer.sites.names import Site
from hf_sae_steer.sites.resolve import resolve_site
from hf_sae_steer.steering.batched import RowSteering, SiteEdit
from hf_sae_steer.steering.effect import concept_effect
from hf_sae_steer.steering.names import DIRECTIONS
from hf_sae_steer.steering.spec import SteeringSpec, resolve_spec

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


@dataclass(frozen=True)
class ResolvedSteering:
    """A request's steering, resolved: the per-row ``edits`` (in item order) and ``applied``,
    what the response reports per item (method, strength, positions, preserve_error, layer,
    site, and the concept / vector / number of latents it came from). ``key`` is a canonical
    string of the items and what they resolved to: equal keys steer identically (a cache
    salt, a grouping key); ``""`` for the base model."""

    items: tuple[SteeringItem, ...]
    edits: RowSteering
    applied: tuple[dict[str, Any], ...]

    @property
    def key(self) -> str:
        if not self.applied:
            return ""
        pairs = [
            {"item": i.to_dict(), "applied": a}
            for i, a in zip(self.items, self.applied, strict=True)
        ]
        return json.dumps(pairs, sort_keys=True)

    @property
    def is_base(self) -> bool:
        return not self.edits


BASE = ResolvedSteering((), (), ())


@dataclass(frozen=True)
class Concept:
    name: str
    scores: FeatureScores
    sae: SAE
    site: Site
    source: str


class ConceptLibrary:
    """Named concepts on one model with its SAEs (see the module docstring)."""

    def __init__(
        self,
        model: nn.Module,
        saes: Sequence[SAE],
        concepts: Mapping[str, FeatureScores],
        *,
        sources: Mapping[str, str] | None = None,
        layout: ModelLayout | None = None,
        cache_size: int = 512,
    ) -> None:
        self.model = model
        self.layout = layout or find_layout(model)
        self.saes = list(saes)
        self.sae_sites = [self._trained_site(sae) for sae in self.saes]
        self.concepts: dict[str, Concept] = {}
        for name, artifact in concepts.items():
            check_name(name)
            sae = self._sae_for(name, artifact)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                site = resolve_site(self.layout, scores=artifact, trained=sae.cfg)
            source = (sources or {}).get(name, name)
            self.concepts[name] = Concept(name, artifact, sae, site, source)
        self._cache: OrderedDict[SteeringItem, tuple[SiteEdit, dict[str, Any]]] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    @property
    def sites(self) -> list[Site]:
        """Every site a request can steer: the concepts' and the SAEs' own."""
        found = [c.site for c in self.concepts.values()] + [s for s in self.sae_sites if s]
        return list(dict.fromkeys(found))

    def describe(self) -> list[dict[str, Any]]:
        """The concepts for ``/v1/models``: name, where they steer, what they recommend. Never
        where the artifact came from: a local source is a path on the server."""
        out = []
        keys = ("method", "strength", "preserve_error")
        for c in self.concepts.values():
            rec, away = c.scores.recommended or {}, c.scores.recommended_away or {}
            out.append({
                "name": c.name, "layer": c.site.layer, "site": c.site.kind,
                "rule": c.scores.rule,
                "recommended": {k: rec[k] for k in keys if k in rec} or None,
                "recommended_away": {k: away[k] for k in keys if k in away} or None,
                "directions": list(DIRECTIONS),
                "vector": "delta_raw" in c.scores.stats,
                "effect": concept_effect(c.scores),
            })  # fmt: skip
        return out

    # -- resolving ------------------------------------------------------------------------
    def resolve(self, items: Sequence[SteeringItem]) -> ResolvedSteering:
        """The edits of ``items``; :class:`RequestError` (400) for an item the library refuses."""
        if not items:
            return BASE
        edits, applied = [], []
        for i, item in enumerate(items):
            with self._lock:
                cached = self._cache.get(item)
                if cached is not None:
                    self._cache.move_to_end(item)
            if cached is None:
                cached = self._build(item, f"steering[{i}]")
                with self._lock:
                    self._cache[item] = cached
                    while len(self._cache) > self._cache_size:
                        self._cache.popitem(last=False)
            edits.append(cached[0])
            applied.append(dict(cached[1]))
        return ResolvedSteering(tuple(items), tuple(edits), tuple(applied))

    def _build(self, item: SteeringItem, param: str) -> tuple[SiteEdit, dict[str, Any]]:
        spec, origin = self._spec(item, param)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                site, step = resolve_spec(spec, self.model, self.layout)
        except (ValueError, TypeError) as error:
            raise RequestError(f"{param}: {_first_line(error)}", param=param) from None
        if site not in self.sites:
            raise RequestError(
                f"{param}: this server steers only at "
                f"{', '.join(s.hook_name for s in self.sites)}, not {site.hook_name}.",
                param=param,
            )
        applied = {
            **origin, "method": step.method, "strength": step.strength,
            "preserve_error": step.preserve_error, "positions": item.positions,
            "layer": site.layer, "site": site.kind, "direction": item.direction,
        }  # fmt: skip
        return SiteEdit(site, step, item.positions), applied  # type: ignore[arg-type]

    def _spec(self, item: SteeringItem, param: str) -> tuple[SteeringSpec, dict[str, Any]]:
        strength = item.strength if isinstance(item.strength, float) else None
        if item.kind == "latents":
            sae = self._sae_at(item, param)
            return (
                SteeringSpec(sae, layer=item.layer, site=item.site, method="add",  # type: ignore[arg-type]
                             latents=dict(item.latents or ()), strength=strength,
                             preserve_error=item.preserve_error, positions=item.positions),  # type: ignore[arg-type]
                {"latents": len(item.latents or ())},
            )  # fmt: skip
        name = item.concept if item.kind == "concept" else item.vector
        concept = self.concepts.get(name or "")
        if concept is None:
            known = ", ".join(self.concepts) or "none"
            raise RequestError(
                f"{param}: unknown concept {name!r}; this server has: {known}.",
                param=param, code="concept_not_found",
            )  # fmt: skip
        artifact = concept.scores
        away = item.direction == "away"
        recommended = artifact.recommended_away if away else artifact.recommended
        method = item.method or (recommended.method if recommended is not None else None)
        if item.kind == "vector":
            method = "vector"
        if item.kind == "vector" and "delta_raw" not in artifact.stats:
            raise RequestError(
                f"{param}: concept {name!r} has no steering vector (fit it with rule='mean_diff').",
                param=param,
            )
        if item.strength == "recommended":
            rec = recommended
            if not rec or method != rec["method"]:
                raise RequestError(
                    f"{param}: concept {name!r} recommends "
                    f"{rec['method'] if rec else 'no steering'}, not {method!r}; give a number.",
                    param=param,
                )
            strength = float(rec["strength"])
        if item.strength == "calibrated":  # resolve_spec reads it (docs/method.md §6)
            strength = "calibrated"  # type: ignore[assignment]
        spec = SteeringSpec(
            concept.sae, scores=artifact, method=method, strength=strength,
            preserve_error=item.preserve_error, positions=item.positions,  # type: ignore[arg-type]
            direction=item.direction,  # type: ignore[arg-type]
        )  # fmt: skip
        return spec, {item.kind: name}

    # -- matching SAEs ----------------------------------------------------------------------
    def _sae_for(self, name: str, artifact: FeatureScores) -> SAE:
        errors = []
        for sae in self.saes:
            try:
                check_compatible(artifact, sae)
                return sae
            except ValueError as error:
                errors.append(_first_line(error))
        raise ValueError(
            f"Concept {name!r} fits none of the served SAEs"
            + (f" ({errors[0]})" if errors else " (no --sae given)")
        )

    def _sae_at(self, item: SteeringItem, param: str) -> SAE:
        if item.layer is None and item.site is None and len(self.saes) == 1:
            return self.saes[0]
        for sae, site in zip(self.saes, self.sae_sites, strict=True):
            if (
                site is not None
                and (item.layer in (None, site.layer))
                and (item.site in (None, site.kind))
            ):
                return sae
        where = ", ".join(s.hook_name for s in self.sae_sites if s) or "none known"
        raise RequestError(
            f"{param}: no served SAE at layer={item.layer}, site={item.site}; SAEs: {where}.",
            param=param,
        )

    def _trained_site(self, sae: SAE) -> Site | None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return resolve_site(self.layout, trained=sae.cfg)
        except ValueError:
            return None


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(
            f"Concept name {name!r} is not allowed; use letters, digits, '_', '-', '.' "
            "(at most 64)."
        )
    return name


def parse_concept_args(values: Sequence[str]) -> dict[str, str]:
    """``["medical=path-or-hub-id", ...]`` as ``{name: source}``; one error per bad entry."""
    out: dict[str, str] = {}
    for value in values:
        name, sep, source = value.partition("=")
        if not sep or not source:
            raise ValueError(f"--concept takes NAME=PATH_OR_HUB_ID, got {value!r}.")
        check_name(name)
        if name in out:
            raise ValueError(f"Concept {name!r} is given twice.")
        out[name] = source
    return out


def concepts_in(folder: str | Path) -> dict[str, str]:
    """Every score artifact folder directly inside ``folder``, named by its folder name."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"--concepts-dir {root} is not a folder.")
    found = {p.name: str(p) for p in sorted(root.iterdir()) if (p / CONFIG_FILE).is_file()}
    if not found:
        raise ValueError(f"--concepts-dir {root} holds no score artifact folders.")
    for name in found:
        check_name(name)
    return found


def load_library(
    model: nn.Module, saes: Sequence[SAE], sources: Mapping[str, str]
) -> ConceptLibrary:
    """Load every concept's artifact (paths or Hub ids) and match it to its SAE."""
    artifacts = {name: load_scores(source) for name, source in sources.items()}
    return ConceptLibrary(model, saes, artifacts, sources=sources)


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
