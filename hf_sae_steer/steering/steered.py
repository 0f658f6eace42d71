"""SteeredModel: SAE steering hooks on a Hugging Face causal LM, with generate() and pipeline()."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from hf_sae_steer.models import hidden_size
from hf_sae_steer.sae.base import SAE
from hf_sae_steer.scoring.record import FeatureScores, check_compatible, load_scores
from hf_sae_steer.sites.hooks import hook_site
from hf_sae_steer.sites.layouts import ModelLayout, find_layout
from hf_sae_steer.sites.names import Site, SiteKind
from hf_sae_steer.sites.resolve import resolve_site
from hf_sae_steer.steering import live
from hf_sae_steer.steering.interventions import Intervention, LatentEdit, Method
from hf_sae_steer.steering.positions import POSITIONS, Positions, PositionTracker

Scores = FeatureScores | Tensor | str | Path


@dataclass
class SteeringSpec:
    """One steered site: an SAE at ``(layer, site)`` applying ``method`` with ``scores``.

    ``layer``/``site`` default to the score artifact's, then to where the SAE was trained
    (:func:`~hf_sae_steer.sites.resolve.resolve_site`). ``scores`` is a
    :class:`FeatureScores`, a per-latent tensor, or a path / Hub id of a score artifact.
    """

    sae: SAE
    layer: int | None = None
    site: SiteKind | None = None
    method: Method = "swap"
    scores: Scores | None = None
    strength: float = 1.0
    preserve_error: bool = False
    edits: Sequence[LatentEdit] = field(default_factory=tuple)
    positions: Positions = "all"
    clamp_k: int = 5
    clamp_value: float = 10.0
    allow_score_mismatch: bool = False


SpecLike = SteeringSpec | Mapping[str, Any] | Sequence[Any]


def as_spec(item: SpecLike) -> SteeringSpec:
    """A :class:`SteeringSpec` from itself, a dict of its fields, or a tuple
    ``(sae, layer, site[, method[, {options}]])`` (the field order of SteeringSpec)."""
    if isinstance(item, SteeringSpec):
        return item
    if isinstance(item, Mapping):
        return SteeringSpec(**item)
    if isinstance(item, tuple | list) and 3 <= len(item) <= 5:
        sae, layer, site, *rest = item
        method = rest[0] if rest else "swap"
        options = rest[1] if len(rest) > 1 else {}
        return SteeringSpec(sae=sae, layer=layer, site=site, method=method, **options)
    raise TypeError(
        f"Cannot read a steering spec from {type(item).__name__}; pass SteeringSpec(...), a dict "
        "of its fields, or a tuple (sae, layer, site[, method[, {options}]])."
    )


def _resolve(
    spec: SteeringSpec, model: nn.Module, layout: ModelLayout
) -> tuple[Site, Intervention]:
    """Validate one spec against the model; build its intervention. Registers nothing."""
    sae = spec.sae
    if not isinstance(sae, SAE):
        raise TypeError(
            f"sae must be an hf_sae_steer SAE (from load_sae), got {type(sae).__name__}."
        )
    scores = spec.scores
    if isinstance(scores, str | Path):
        scores = load_scores(scores)
    artifact = scores if isinstance(scores, FeatureScores) else None
    if artifact is not None:
        check_compatible(artifact, sae, allow_mismatch=spec.allow_score_mismatch)
    site = resolve_site(layout, spec.layer, spec.site, scores=artifact, trained=sae.cfg)
    width = hidden_size(model)
    if width is not None and sae.d_in != width:
        raise ValueError(
            f"SAE width d_in={sae.d_in} does not match the model's hidden size {width}: this SAE "
            "was trained on another model. Load an SAE for this model."
        )
    if spec.positions not in POSITIONS:
        raise ValueError(
            f"Unknown positions {spec.positions!r}; use one of {', '.join(POSITIONS)}."
        )
    step = Intervention(
        sae,
        spec.method,
        artifact.scores if artifact is not None else scores,
        strength=spec.strength,
        preserve_error=spec.preserve_error,
        edits=spec.edits,
        clamp_k=spec.clamp_k,
        clamp_value=spec.clamp_value,
    )
    block = layout.blocks[site.layer]
    param = next((p for p in block.parameters() if p.device.type != "meta"), None)
    if param is not None and param.is_floating_point():
        step.place(param.device, param.dtype)  # beside its block (device_map="auto" too)
    return site, step


def _registration_order(
    resolved: list[tuple[Site, Intervention]], specs: list[SteeringSpec]
) -> list[tuple[tuple[Site, Intervention], SteeringSpec]]:
    """resid_pre edits first (a resid_mid hook must read the edited block input); resid_post
    hooks are prepended, so registering them last-first applies them in the order given."""
    pairs = list(zip(resolved, specs, strict=True))
    pre = [p for p in pairs if p[0][0].kind == "resid_pre"]
    post = [p for p in pairs if p[0][0].kind == "resid_post"]
    rest = [p for p in pairs if p[0][0].kind not in ("resid_pre", "resid_post")]
    return pre + rest + post[::-1]


class SteeredModel(nn.Module):
    """A causal LM whose forward passes are steered by SAE hooks on its blocks.

    The hooks live on ``model`` itself until :meth:`remove` (or the end of a ``with`` block), so
    ``steered.generate``, ``steered(...)``, ``pipeline(model=steered)`` and the wrapped model
    are all steered; anything else is delegated to the wrapped model.

    Pass one SAE and keyword options, or a list of :class:`SteeringSpec` (or dicts / tuples,
    see :func:`as_spec`) to steer several sites at once.

    Example:
        >>> sae = load_sae("openai:v5_32k/resid_post_mlp/9")                  # doctest: +SKIP
        >>> steered = SteeredModel(model, sae, layer=9, method="swap", scores=scores)
        >>> steered.generate(**tok("The patient", return_tensors="pt"), max_new_tokens=20)
        >>> with steered.disabled():
        ...     base = steered.generate(**inputs)
        >>> steered.remove()
    """

    def __init__(
        self,
        model: nn.Module,
        sae: SAE | Sequence[SpecLike],
        *,
        layer: int | None = None,
        site: SiteKind | None = None,
        method: Method = "swap",
        scores: Scores | None = None,
        strength: float = 1.0,
        preserve_error: bool = False,
        edits: Sequence[LatentEdit] = (),
        positions: Positions = "all",
        clamp_k: int = 5,
        clamp_value: float = 10.0,
        allow_score_mismatch: bool = False,
        blocks: str | None = None,
        attn: str | None = None,
        mlp: str | None = None,
        parallel: bool | None = None,
    ) -> None:
        super().__init__()
        if isinstance(sae, SAE):
            specs = [
                SteeringSpec(
                    sae,
                    layer=layer,
                    site=site,
                    method=method,
                    scores=scores,
                    strength=strength,
                    preserve_error=preserve_error,
                    edits=tuple(edits),
                    positions=positions,
                    clamp_k=clamp_k,
                    clamp_value=clamp_value,
                    allow_score_mismatch=allow_score_mismatch,
                )
            ]
        elif isinstance(sae, Sequence) and not isinstance(sae, str) and len(sae) > 0:
            specs = [as_spec(item) for item in sae]
        else:
            raise TypeError("Pass an SAE (from load_sae) or a non-empty list of SteeringSpec.")
        if live.live_steerings(model):
            raise RuntimeError(
                "This model is already steered by another SteeredModel; call .remove() on it (or "
                "hf_sae_steer.remove_steering(model)), or pass several specs to one SteeredModel."
            )
        layout = find_layout(model, blocks=blocks, attn=attn, mlp=mlp, parallel=parallel)
        resolved = [_resolve(spec, model, layout) for spec in specs]  # all checks before any hook
        self.model = model
        self.layout = layout
        self.specs = specs
        self.sites = [site for site, _ in resolved]
        self.interventions = [step for _, step in resolved]
        self.tracker = PositionTracker()
        self._handles: list[RemovableHandle] = []
        try:
            self._handles.append(self.tracker.attach(layout.decoder))
            for (site_, step), spec in _registration_order(resolved, specs):
                self._handles += hook_site(layout, site_, self.tracker.edit(step, spec.positions))
        except BaseException:
            self.remove()
            raise
        live.register(model, self)
        _register_with_pipelines()

    # -- the model, steered --------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self._check_live()
        return self.model(*args, **kwargs)

    @torch.no_grad()
    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """``model.generate`` with steering at every new token (KV cache on); same arguments."""
        self._check_live()
        inputs = next(
            (v for v in (kwargs.get("input_ids"), *args[:1], kwargs.get("inputs_embeds"))
             if isinstance(v, Tensor)),
            None,
        )  # fmt: skip
        with self.tracker.prompt(None if inputs is None else inputs.shape[1]):
            return self.model.generate(*args, **kwargs)

    @contextlib.contextmanager
    def disabled(self) -> Iterator[SteeredModel]:
        """Run the base model inside this block; steering resumes afterwards, even on error."""
        with self.tracker.steering(False):
            yield self

    @contextlib.contextmanager
    def enabled(self, value: bool = True) -> Iterator[SteeredModel]:
        with self.tracker.steering(value):
            yield self

    def suspended(self) -> contextlib.AbstractContextManager[object]:
        """The registry's switch (see :func:`~hf_sae_steer.steering.live.steering_suspended`)."""
        return self.tracker.steering(False)

    @property
    def is_steering(self) -> bool:
        return bool(self._handles) and self.tracker.enabled

    def set_strength(self, strength: float) -> None:
        """Change the strength of every site in place (cheap: no hooks move)."""
        for step in self.interventions:
            step.strength = float(strength)
        self.specs = [replace(spec, strength=float(strength)) for spec in self.specs]

    def remove(self) -> None:
        """Remove every hook: the wrapped model is exactly the model you passed in."""
        for handle in self.__dict__.get("_handles", []):
            handle.remove()
        self.__dict__["_handles"] = []
        model = self.__dict__.get("_modules", {}).get("model")
        if model is not None:
            live.unregister(model, self)

    def __enter__(self) -> SteeredModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def _check_live(self) -> None:
        if not self._handles:
            raise RuntimeError(
                "This SteeredModel was removed; build a new one to steer, or use the model itself."
            )

    # -- delegation so generate()/pipeline() users see the model they know ----------------
    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            model = self.__dict__.get("_modules", {}).get("model")
            if model is None:
                raise
            return getattr(model, name)

    def __repr__(self) -> str:
        parts = [
            f"{site.hook_name}: {step.method} (strength={step.strength}, "
            f"preserve_error={step.preserve_error}, d_sae={step.sae.d_sae})"
            for site, step in zip(self.sites, self.interventions, strict=True)
        ]
        state = "removed" if not self._handles else ("on" if self.tracker.enabled else "disabled")
        return f"SteeredModel({type(self.model).__name__}, {state}; " + "; ".join(parts) + ")"


def _register_with_pipelines() -> None:
    """Let ``pipeline("text-generation", model=steered)`` accept SteeredModel without logging
    "model not supported": transformers checks the class name against a list that already
    admits wrappers (PEFT's); we add ours the same way. Only once transformers.pipelines is
    loaded (by whoever calls pipeline()): importing it here would cost seconds at import."""
    base = sys.modules.get("transformers.pipelines.base")
    if base is None or not hasattr(base, "SUPPORTED_PEFT_TASKS"):
        return
    names = base.SUPPORTED_PEFT_TASKS.setdefault("text-generation", [])
    if SteeredModel.__name__ not in names:
        names.append(SteeredModel.__name__)
