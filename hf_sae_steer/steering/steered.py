"""SteeredModel: SAE steering hooks on a Hugging Face causal LM, with generate() and pipeline().

Thread safety: forward passes and ``generate`` calls from several threads on one SteeredModel
are safe, and each thread's ``disabled()`` / positions state is its own. Changing the steering
(``set_strength``, ``remove``) while another thread generates is not: do it between calls.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from hf_sae_steer.sae.base import SAE
from hf_sae_steer.sites.hooks import hook_site, remove_hooks, steering_hooks
from hf_sae_steer.sites.layouts import find_layout
from hf_sae_steer.sites.names import Site, SiteKind
from hf_sae_steer.steering import live
from hf_sae_steer.steering.interventions import Intervention, LatentEdit
from hf_sae_steer.steering.names import Direction, Method
from hf_sae_steer.steering.pinned_generate import PinnedGenerate
from hf_sae_steer.steering.pipelines import register_with_pipelines
from hf_sae_steer.steering.positions import Positions, PositionTracker
from hf_sae_steer.steering.spec import (
    LatentsLike,
    Scores,
    SpecLike,
    SteeringSpec,
    as_spec,
    resolve_spec,
    signed_strength,
)


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


def _overflow_advice(interventions: list[Intervention]) -> str:
    """What to lower when steering overflows: each site's scaling settings, deduplicated."""
    parts = dict.fromkeys(part for step in interventions for part in step.magnitudes())
    return " or ".join(parts)


class SteeredModel(nn.Module):
    """A causal LM whose forward passes are steered by SAE hooks on its blocks.

    The hooks live on ``model`` itself until :meth:`remove` (or the end of a ``with`` block), so
    ``steered.generate``, ``steered(...)``, ``pipeline(model=steered)`` and the wrapped model
    are all steered; anything else is delegated to the wrapped model.

    ``direction="away"`` steers away from the scores' topic: their recommended suppression
    (``docs/method.md`` §9) unless ``method``/``strength`` say otherwise.

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
        sae: SAE | Sequence[SpecLike] | None,
        *,
        layer: int | None = None,
        site: SiteKind | None = None,
        method: Method | None = None,
        scores: Scores | None = None,
        strength: float | Literal["calibrated"] | None = None,
        preserve_error: bool | None = None,
        edits: Sequence[LatentEdit] = (),
        positions: Positions = "all",
        clamp_k: int = 5,
        clamp_value: float | None = None,
        latents: LatentsLike | None = None,
        vector: Tensor | None = None,
        allow_score_mismatch: bool = False,
        direction: Direction = "toward",
        blocks: str | None = None,
        attn: str | None = None,
        mlp: str | None = None,
        parallel: bool | None = None,
    ) -> None:
        super().__init__()
        if isinstance(model, SteeredModel):
            model = model.model  # steering a steered model: the guard below explains
        if sae is None or isinstance(sae, SAE):
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
                    latents=latents,
                    vector=vector,
                    allow_score_mismatch=allow_score_mismatch,
                    direction=direction,
                )
            ]
        elif isinstance(sae, Sequence) and not isinstance(sae, str) and len(sae) > 0:
            specs = [as_spec(item) for item in sae]
        else:
            raise TypeError(
                "Pass an SAE (from load_sae), None (method='vector'), or a non-empty list of "
                "SteeringSpec."
            )
        if live.live_steerings(model) or any(h.live for *_, h in steering_hooks(model)):
            raise RuntimeError(
                "This model is already steered by another SteeredModel; call .remove() on it (or "
                "hf_sae_steer.remove_steering(model)), or pass several specs to one SteeredModel."
            )
        layout = find_layout(model, blocks=blocks, attn=attn, mlp=mlp, parallel=parallel)
        resolved = [resolve_spec(spec, model, layout) for spec in specs]  # checks first
        self.model = model
        self.layout = layout
        self.specs = specs
        self.sites = [site for site, _ in resolved]
        self.interventions = [step for _, step in resolved]
        advice = functools.partial(_overflow_advice, self.interventions)
        self.tracker = PositionTracker(advice=advice)
        self._layout_options = {"blocks": blocks, "attn": attn, "mlp": mlp, "parallel": parallel}
        self._handles: list[RemovableHandle] = []
        self._generate: PinnedGenerate | None = None
        try:
            self._handles.append(self.tracker.attach(layout.decoder))
            self._handles.append(self.tracker.attach_output(model))
            for (site_, step), spec in _registration_order(resolved, specs):
                self._handles += hook_site(layout, site_, self.tracker.edit(step, spec.positions))
            self._generate = PinnedGenerate.install(model, self.tracker)
        except BaseException:
            self.remove()
            raise
        live.register(model, self)
        register_with_pipelines()

    # -- the model, steered --------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self._check_live()
        with self.tracker.checked():
            return self.model(*args, **kwargs)

    @torch.no_grad()
    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """``model.generate`` with steering at every new token; same arguments, every decoding
        mode (the wrapped model's own ``generate`` is the same call while it is steered)."""
        self._check_live()
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
        """Change the strength of every site in place (cheap: no hooks move; not while another
        thread generates). A site steering away keeps its direction: ``vector`` away subtracts."""
        strength = Intervention.check_strength(strength)
        for step, spec in zip(self.interventions, self.specs, strict=True):
            step.strength = signed_strength(spec.direction, step.method, strength)
        self.specs = [replace(spec, strength=float(strength)) for spec in self.specs]

    def remove(self) -> None:
        """Remove every hook: the wrapped model is exactly the model you passed in."""
        for handle in self.__dict__.get("_handles", []):
            handle.remove()
        self.__dict__["_handles"] = []
        patch = self.__dict__.pop("_generate", None)
        if patch is not None:
            patch.uninstall()
        model = self.__dict__.get("_modules", {}).get("model")
        if model is not None:
            live.unregister(model, self)

    def __deepcopy__(self, memo: dict) -> SteeredModel:
        """A steered copy of a copy of the model: its own hooks and state, none shared."""
        self._check_live()
        model = copy.deepcopy(self.model, memo)
        remove_hooks(model)  # the copied hooks are inert: drop them before steering the copy
        PinnedGenerate.drop(model)
        return SteeredModel(model, [replace(spec) for spec in self.specs], **self._layout_options)

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
            f"preserve_error={step.preserve_error}, "
            f"d_sae={step.sae.d_sae if step.sae is not None else None})"
            for site, step in zip(self.sites, self.interventions, strict=True)
        ]
        state = "removed" if not self._handles else ("on" if self.tracker.enabled else "disabled")
        return f"SteeredModel({type(self.model).__name__}, {state}; " + "; ".join(parts) + ")"
