"""SteeredModel: SAE steering hooks on a Hugging Face causal LM, with generate() and pipeline()."""

from __future__ import annotations

import contextlib
import sys
import warnings
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from hf_sae_steer.interventions import Intervention, LatentEdit
from hf_sae_steer.positions import POSITIONS, PositionTracker
from hf_sae_steer.sae.base import SAE
from hf_sae_steer.sites import ModelLayout, Site, find_layout, hook_site

# Every live SteeredModel per model, so a second one on the same model is a clear error
# rather than silently stacked hooks.
_ACTIVE: weakref.WeakKeyDictionary[nn.Module, list[SteeredModel]] = weakref.WeakKeyDictionary()


@dataclass
class SteeringSpec:
    """One steered site: an SAE at ``(layer, site)`` applying ``method`` with ``scores``.

    ``layer``/``site`` default to the score artifact's, then to where the SAE was trained.
    """

    sae: SAE
    layer: int | None = None
    site: str | None = None
    method: str = "swap"
    scores: Any = None
    strength: float = 1.0
    preserve_error: bool = False
    edits: Sequence[LatentEdit] = field(default_factory=tuple)
    positions: str = "all"
    clamp_k: int = 5
    clamp_value: float = 10.0
    allow_score_mismatch: bool = False


def _as_spec(item: Any) -> SteeringSpec:
    if isinstance(item, SteeringSpec):
        return item
    if isinstance(item, dict):
        return SteeringSpec(**item)
    if isinstance(item, tuple | list):
        layer, site, sae, *rest = item
        method = rest[0] if rest else "swap"
        extra = rest[1] if len(rest) > 1 else {}
        return SteeringSpec(sae=sae, layer=layer, site=site, method=method, **extra)
    raise TypeError(
        f"Cannot read a steering spec from {type(item).__name__}; pass SteeringSpec(...), a dict "
        "of its fields, or a tuple (layer, site, sae, method[, {options}])."
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
    artifact = scores if hasattr(scores, "sae_fingerprint") else None
    if artifact is not None:
        from hf_sae_steer.artifacts import check_compatible

        check_compatible(artifact, sae, allow_mismatch=spec.allow_score_mismatch)
        scores = artifact.scores
    layer = _first_set(spec.layer, getattr(artifact, "layer", None), sae.cfg.layer)
    kind = _first_set(spec.site, getattr(artifact, "site", None), sae.cfg.site, "resid_post")
    if layer is None:
        raise ValueError(
            "No layer given and the SAE does not say where it was trained; pass layer=<block>."
        )
    layout.check_layer(layer)
    layer = layer % layout.n_layers
    site = Site(layer, kind)
    fitted = (getattr(artifact, "layer", None), getattr(artifact, "site", None))
    for given, known, name in ((layer, fitted[0], "layer"), (kind, fitted[1], "site")):
        if known is not None and given != known:
            warnings.warn(
                f"These scores were fitted at {name}={known!r} but you steer {name}={given!r}; "
                "the latents' scores may not carry over.",
                stacklevel=3,
            )
    if sae.cfg.site is not None and (sae.cfg.layer, sae.cfg.site) != (layer, kind):
        warnings.warn(
            f"This SAE was trained on {Site(sae.cfg.layer or 0, sae.cfg.site).hook_name} but is "
            f"steering {site.hook_name}; its latents may mean little there.",
            stacklevel=3,
        )
    hidden = _hidden_size(model)
    if hidden is not None and sae.d_in != hidden:
        raise ValueError(
            f"SAE width d_in={sae.d_in} does not match the model's hidden size {hidden}: this SAE "
            "was trained on another model. Load an SAE for this model."
        )
    if spec.positions not in POSITIONS:
        raise ValueError(
            f"Unknown positions {spec.positions!r}; use one of {', '.join(POSITIONS)}."
        )
    step = Intervention(
        sae,
        spec.method,
        scores,
        strength=spec.strength,
        preserve_error=spec.preserve_error,
        edits=spec.edits,
        clamp_k=spec.clamp_k,
        clamp_value=spec.clamp_value,
    )
    param = next((p for p in layout.blocks[layer].parameters() if p.device.type != "meta"), None)
    if param is not None and param.is_floating_point():
        step._place(param.device, param.dtype)
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


def _first_set(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def _hidden_size(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    for name in ("hidden_size", "n_embd", "d_model"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


class SteeredModel(nn.Module):
    """A causal LM whose forward passes are steered by SAE hooks on its blocks.

    The hooks live on ``model`` itself until :meth:`remove` (or the end of a ``with`` block), so
    ``steered.generate``, ``steered(...)``, ``pipeline(model=steered)`` and the wrapped model
    are all steered; anything else is delegated to the wrapped model.

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
        sae: SAE | Sequence[Any] | None = None,
        layer: int | None = None,
        site: str | None = None,
        method: str = "swap",
        scores: Any = None,
        strength: float = 1.0,
        preserve_error: bool = False,
        *,
        edits: Sequence[LatentEdit] = (),
        positions: str = "all",
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
                    layer,
                    site,
                    method,
                    scores,
                    strength,
                    preserve_error,
                    tuple(edits),
                    positions,
                    clamp_k,
                    clamp_value,
                    allow_score_mismatch,
                )
            ]
        elif isinstance(sae, Sequence) and not isinstance(sae, str) and len(sae) > 0:
            specs = [_as_spec(item) for item in sae]
        else:
            raise TypeError("Pass an SAE (from load_sae) or a non-empty list of SteeringSpec.")
        others = [s for s in _ACTIVE.get(model, []) if s._handles]
        if others:
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
        _ACTIVE.setdefault(model, []).append(self)
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
        if model is not None and model in _ACTIVE:
            _ACTIVE[model] = [s for s in _ACTIVE[model] if s is not self]

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


@contextlib.contextmanager
def steering_suspended(model: nn.Module) -> Iterator[None]:
    """Run ``model`` unsteered inside this block (e.g. to score while a SteeredModel is live)."""
    with contextlib.ExitStack() as stack:
        for steered in _ACTIVE.get(model, []):
            stack.enter_context(steered.tracker.steering(False))
        yield


def remove_steering(model: nn.Module) -> int:
    """Remove every SteeredModel's hooks from ``model``; returns how many were removed."""
    live = list(_ACTIVE.get(model, []))
    for steered in live:
        steered.remove()
    return len(live)
