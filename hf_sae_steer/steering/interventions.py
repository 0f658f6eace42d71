"""What hooks do: pure tensor functions from a site's hidden state ``x`` to the steered ``x'``.

The methods are ``docs/method.md`` §2 and §6. With ``s`` the per-latent scores, ``pre`` the
SAE's pre-activations of ``x`` and ``z = act(pre)``:

======  ================================================  ====================================
orig    ``x`` unchanged                                   baseline
sae     ``z``                                             the SAE round trip
clamp   ``z``, +c on the K top-scoring latents            the usual SAE steering; ``c`` is 10
                                                          in the reference, else each latent's
                                                          typical activation
weight  ``act(pre * s)``                                  score-weighted pre-activations
swap    ``pre * (act(pre * s) != 0)``                     latents chosen by the weighted code,
                                                          with their unweighted pre-activations
add     ``z``, +w_i on chosen latents i                   a rule's latents with their weights
vector  (no SAE) ``x + v``                                a steering vector, e.g. mean difference
======  ================================================  ====================================

``x' = decode(z')``, or with ``preserve_error`` ``x + decode(z') - decode(z)``, then
``x + strength * (x' - x)``. ``clamp`` and ``add`` with ``preserve_error`` add a constant change
of latents, so they need no encoder at all: ``x + strength * scale(x) * (c @ W_dec)``. Nothing
here knows about models or hooks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

from hf_sae_steer.sae.base import SAE, Code, SparseCode
from hf_sae_steer.steering.names import MAX_STRENGTH, METHODS, NEEDS_SCORES, Method
from hf_sae_steer.steering.names import REFERENCE_METHODS as REFERENCE_METHODS  # re-export
from hf_sae_steer.steering.strength import clamp_values
from hf_sae_steer.steering.suppression import (
    TopicLatents,
    ablation_change,
    attenuation_change,
    suppression_change,
    topic_posterior,
    unit_direction,
)

EditMode = Literal["pin", "add", "multiply"]
EDIT_MODES: tuple[EditMode, ...] = get_args(EditMode)
# Methods whose new code is the plain activation act(pre); clamp and add put a constant on top.
_UNWEIGHTED = ("orig", "sae", "clamp", "add", "suppress")


@dataclass(frozen=True)
class LatentEdit:
    """A direct edit of one latent: ``pin`` it to ``value``, ``add`` ``value``, or ``multiply``."""

    index: int
    value: float
    mode: EditMode = "add"

    def __post_init__(self) -> None:
        if self.mode not in EDIT_MODES:
            raise ValueError(
                f"Unknown edit mode {self.mode!r}; use one of {', '.join(EDIT_MODES)}."
            )
        if not math.isfinite(self.value):
            raise ValueError(f"Edit of latent {self.index} has a non-finite value {self.value}.")


def check_scores(scores: Tensor, d_sae: int) -> Tensor:
    """Validate a score vector for an SAE with ``d_sae`` latents; return it as float32."""
    scores = torch.as_tensor(scores).detach().to("cpu", torch.float32)
    if scores.ndim != 1 or scores.shape[0] != d_sae:
        raise ValueError(
            f"scores must be a 1-D vector of length d_sae={d_sae} (one per SAE latent), "
            f"got shape {tuple(scores.shape)}; were they computed for another SAE?"
        )
    bad = (~torch.isfinite(scores)).sum().item()
    if bad:
        raise ValueError(
            f"scores contain {bad} NaN/inf values; replace them (latents that never fired score 0)."
        )
    if scores.numel() and (scores.min() < 0 or scores.max() > 1):
        raise ValueError(
            f"scores must lie in [0, 1] (docs/method.md §2), got values from {scores.min():.3g} to "
            f"{scores.max():.3g}; rescale them, e.g. (s - s.min()) / (s.max() - s.min())."
        )
    return scores


class Intervention:
    """One SAE intervention, compiled for repeated calls on a hot path.

    Example:
        >>> step = Intervention(sae, "swap", scores=s)          # doctest: +SKIP
        >>> x_steered = step(x)                                  # x: [batch, seq, d_in]
    """

    def __init__(
        self,
        sae: SAE | None,
        method: Method = "swap",
        scores: Tensor | None = None,
        *,
        strength: float = 1.0,
        preserve_error: bool = False,
        edits: Sequence[LatentEdit] = (),
        clamp_k: int = 5,
        clamp_value: float | None = 10.0,
        typical: Tensor | None = None,
        latents: SparseCode | None = None,
        vector: Tensor | None = None,
        topic: TopicLatents | None = None,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"Unknown method {method!r}; use one of {', '.join(METHODS)}.")
        strength = self.check_strength(strength)
        if sae is None and method not in ("vector", "ablate"):
            raise ValueError(
                f"Method {method!r} needs an SAE; only 'vector' and 'ablate' steer without one."
            )
        if method in NEEDS_SCORES and scores is None:
            raise ValueError(
                f"Method {method!r} needs scores (one per latent, from FeatureScores)."
            )
        if method == "vector":
            if vector is None:
                raise ValueError("Method 'vector' needs a steering vector (vector=, or scores "
                                 "fitted with rule='mean_diff').")  # fmt: skip
            vector = _check_vector(vector, sae)
        if method == "ablate":
            if vector is None:
                raise ValueError("Method 'ablate' needs the topic direction (vector=, or scores "
                                 "fitted with rule='mean_diff').")  # fmt: skip
            vector = _check_vector(vector, sae)
            unit_direction(vector)  # refuses a zero direction now, not at the first token
        if method == "suppress":
            if topic is None:
                raise ValueError("Method 'suppress' needs the topic's latents (topic=, or scores "
                                 "fitted by hf_sae_steer 0.4 or later).")  # fmt: skip
            topic.check(sae.d_sae)  # type: ignore[union-attr]
        if method == "attenuate":
            if vector is None or topic is None or not topic.gated:
                raise ValueError("Method 'attenuate' needs the topic direction and the latents "
                                 "of its posterior with their log odds (vector= and topic=, or "
                                 "scores fitted by hf_sae_steer 0.4 or later with "
                                 "rule='mean_diff' or 'output').")  # fmt: skip
            vector = _check_vector(vector, sae)
            topic.check(sae.d_sae)  # type: ignore[union-attr]
        if method == "add":
            if latents is None:
                raise ValueError("Method 'add' needs latents and weights (latents=, or scores "
                                 "fitted with rule='mean_diff').")  # fmt: skip
            latents = _check_latents(latents, sae)
        n = sae.d_sae if sae is not None else 0
        if method == "clamp" and not 0 < clamp_k <= n:
            raise ValueError(f"clamp_k={clamp_k} must be between 1 and d_sae={n}.")
        if clamp_value is not None and not math.isfinite(clamp_value):
            raise ValueError(f"clamp_value must be finite, got {clamp_value}.")
        for edit in edits:
            if sae is None or not 0 <= edit.index < n:
                raise ValueError(f"Edited latent {edit.index} is out of range for d_sae={n}.")
        self.sae = sae
        self.method = method
        self.scores = None if scores is None or sae is None else check_scores(scores, n)
        self.strength = float(strength)
        self.preserve_error = preserve_error
        self.edits = tuple(edits)
        self.clamp_k = clamp_k
        self.clamp_value = clamp_value
        self.typical = typical
        self.latents = latents
        self.vector = vector
        self.topic = topic
        self._placed: torch.device | None = None
        self.place(sae.device if sae is not None else vector.device)

    @staticmethod
    def check_strength(strength: float) -> float:
        """``strength`` as a float, when finite and at most :data:`MAX_STRENGTH` in size."""
        strength = float(strength)
        if not math.isfinite(strength) or abs(strength) > MAX_STRENGTH:
            raise ValueError(
                f"strength must be a finite number between -{MAX_STRENGTH:g} and "
                f"{MAX_STRENGTH:g}, got {strength:g}: it multiplies what the method does, so "
                "values near 1 (or the artifact's recommended strength) are the useful range."
            )
        return strength

    def magnitudes(self) -> list[str]:
        """The settings that scale what this intervention writes (for an overflow message)."""
        parts = [f"strength={self.strength:g}"]
        if self.method == "clamp" and self.clamp_value is not None:
            parts.append(f"clamp_value={self.clamp_value:g}")
        if self.method == "add" and self.latents is not None:
            largest = float(self.latents.values.abs().max())
            parts.append(f"the latents= weights (largest {largest:g})")
        if self.edits:
            parts.append(f"the edits= values (largest {max(abs(e.value) for e in self.edits):g})")
        if self.method in ("vector", "attenuate") and self.vector is not None:
            parts.append(f"the vector= (norm {float(self.vector.float().norm()):g})")
        return parts

    @property
    def is_identity(self) -> bool:
        """True when the intervention cannot change ``x`` (so hooks can skip the SAE)."""
        no_latent_change = self.method == "orig" or (self.method == "sae" and self.preserve_error)
        return self.strength == 0.0 or (no_latent_change and not self.edits)

    @property
    def keeps_error(self) -> bool:
        """Whether the result is ``x`` plus a change (the SAE's error term survives)."""
        return self.preserve_error or self.method in (
            "orig", "vector", "ablate", "suppress", "attenuate"
        )

    @property
    def clamped(self) -> SparseCode | None:
        """The latents ``clamp`` raises and by how much (None for other methods)."""
        if self.method != "clamp" or self.scores is None:
            return None
        return clamp_values(self.scores, self.clamp_k, self.clamp_value, self.typical)

    @property
    def added(self) -> Tensor | None:
        """What this intervention adds at strength 1 when it is a constant (``vector``; ``add``
        and ``clamp`` keeping the error) in the SAE's input space for the SAE methods (scaled by
        each token's preprocessing scale), else ``None``."""
        if self.method == "vector":
            return self._vector
        return self._shift if self._constant else None

    def place(self, device: torch.device, dtype: torch.dtype | None = None) -> None:
        """Prepare for inputs on ``device``: the SAE (a copy if it must move; the user's stays
        put), the scores and the constant decoder-space vectors, all in float32 whatever the
        model's dtype (``dtype`` is accepted for symmetry and ignored): TopK selection is a hard
        threshold, and bfloat16 pre-activations tie often enough to flip it."""
        device = torch.device(device)
        self._placed = device
        # Decided once, not per token: add/clamp keeping the error only add a constant.
        self._constant = self.keeps_error and self.method in ("add", "clamp") and not self.edits
        f32 = torch.float32
        self._vector = None if self.vector is None else self.vector.to(device, f32)
        if self.method == "ablate":
            self._vector = unit_direction(self._vector)
        if self.sae is None:
            return
        sae = self._sae = self.sae.placed(device, f32)
        self._s = None if self.scores is None else self.scores.to(device, f32)
        # Decoding is linear, so a constant change of latents is one constant vector.
        constant = self.clamped if self.method == "clamp" else self.latents
        self._shift = None
        if self.method in ("clamp", "add") and constant is not None:
            code = SparseCode(constant.indices.to(device), constant.values.to(device, f32))
            self._shift = sae.decode_change(code)
        if self.topic is not None:
            self._topic_index = self.topic.indices.to(device)
            if self.method == "suppress":  # attenuate decodes nothing
                self._topic_rows = sae.W_dec.index_select(0, self._topic_index)
            odds = self.topic.log_odds
            self._topic_odds = None if odds is None else odds.to(device, f32)
        if self.edits:
            self._edit_index = torch.tensor([e.index for e in self.edits], device=device)
            self._edit_value = torch.tensor([e.value for e in self.edits], device=device, dtype=f32)
            self._edit_mode = [e.mode for e in self.edits]

    def __call__(self, x: Tensor) -> Tensor:
        if self.is_identity:
            return x
        if self._placed != x.device:
            self.place(x.device)
        xf = x if x.dtype == torch.float32 else x.float()
        if self.method == "ablate":
            x_new = xf + self.strength * ablation_change(xf, self._vector)
        elif self.method == "attenuate":
            x_new = xf + self.strength * self._attenuation_change(xf)
        elif self.method == "vector" or self._constant:
            x_new = xf + self._constant_change(xf)  # no encoder; the strength scales a [d] vector
        else:
            x_new = self._through_sae(xf)
            if self.strength != 1.0:
                x_new = xf + self.strength * (x_new - xf)
        return x_new if x_new.dtype == x.dtype else x_new.to(x.dtype)

    def _constant_change(self, x: Tensor) -> Tensor:
        """``strength`` times the constant change (``vector``; ``add``/``clamp`` keeping the
        error, scaled per token by the SAE's preprocessing): a few cheap ops per token."""
        if self.method == "vector":
            return self._vector * self.strength
        shift = self._shift * self.strength
        scale = self._sae.input_scale(x)
        return shift if scale is None else shift * scale

    def _attenuation_change(self, x: Tensor) -> Tensor:
        """``-p(topic | z(x)) v`` at strength 1: the mean difference subtracted in proportion to
        the SAE's posterior that the token is on the topic (nothing where it sees none)."""
        xp, _ = self._sae.preprocess(x)
        code = self._sae.code(self._sae.encode_pre(xp))
        gate = topic_posterior(_values_at(code, self._topic_index), self._topic_odds,
                               self.topic.bias)  # type: ignore[union-attr, arg-type]  # fmt: skip
        return attenuation_change(gate, self._vector)

    def _through_sae(self, x: Tensor) -> Tensor:
        sae = self._sae
        xp, info = sae.preprocess(x)
        pre = sae.encode_pre(xp)
        code = self._new_code(pre)
        changes: list[Tensor] = []  # in the decoder's space, scaled once at the end
        if self.method == "suppress":
            x_new = x
            topic_code = _values_at(code, self._topic_index)
            gate = None
            if self._topic_odds is not None:
                gate = topic_posterior(topic_code, self._topic_odds, self.topic.bias)  # type: ignore[union-attr, arg-type]
            changes.append(suppression_change(topic_code, self._topic_rows, gate))
        elif self.keeps_error:
            x_new = x  # x + dec(z') - dec(z): only the change of latents is decoded
            if self.method not in _UNWEIGHTED:
                old = sae.code(pre)
                diff = code.minus(old) if isinstance(code, SparseCode) else code - old
                changes.append(sae.decode_change(diff))
        else:
            x_new = sae.decode_code(code, info)
        if self._shift is not None:
            changes.append(self._shift)
        if self.edits:
            changes.append(self._edit_change(code))
        if changes:
            x_new = x_new + sae.scale_change(sum(changes[1:], changes[0]), info)
        return x_new

    # -- the method table ----------------------------------------------------------------
    def _new_code(self, pre: Tensor) -> Code:
        """``z'`` of the method (before clamp's constant and the direct edits)."""
        sae, m = self._sae, self.method
        if m in _UNWEIGHTED:
            return sae.code(pre)
        weighted = sae.code(pre * self._s)
        if m == "weight":
            return weighted
        # swap: the latents the weighted code selects, with their unweighted pre-activations
        if isinstance(weighted, SparseCode):
            kept = pre.gather(-1, weighted.indices) * (weighted.values != 0)
            return SparseCode(weighted.indices, kept)
        return pre * (weighted != 0)

    def _edit_change(self, code: Code) -> Tensor:
        """Decoder-space change from the direct latent edits, applied on top of the method."""
        idx = self._edit_index
        current = _values_at(code, idx)
        target = current.clone()
        for j, mode in enumerate(self._edit_mode):
            v = self._edit_value[j]
            if mode == "pin":
                target[..., j] = v
            elif mode == "add":
                target[..., j] = current[..., j] + v
            else:
                target[..., j] = current[..., j] * v
        return (target - current) @ self._sae.W_dec.index_select(0, idx)


def _values_at(code: Code, index: Tensor) -> Tensor:
    """The code's values at latents ``index`` [m]: [..., m], sparse or dense."""
    if isinstance(code, SparseCode):
        hit = code.indices.unsqueeze(-1) == index  # [..., k, m]
        return (code.values.unsqueeze(-1) * hit).sum(dim=-2)
    return code.index_select(-1, index)


def _check_vector(vector: Tensor, sae: SAE | None) -> Tensor:
    vector = torch.as_tensor(vector).detach().flatten()
    if sae is not None and vector.numel() != sae.d_in:
        raise ValueError(
            f"The steering vector has {vector.numel()} entries but the site has width "
            f"d_in={sae.d_in}."
        )
    if not torch.isfinite(vector).all():
        raise ValueError("The steering vector holds NaN/inf values.")
    return vector.float() if not vector.is_floating_point() else vector


def _check_latents(latents: SparseCode, sae: SAE | None) -> SparseCode:
    indices = torch.as_tensor(latents.indices).long().flatten()
    values = torch.as_tensor(latents.values, dtype=torch.float32).flatten()
    n = sae.d_sae if sae is not None else 0
    if indices.numel() != values.numel() or indices.numel() == 0:
        raise ValueError("latents= needs as many weights as latents, and at least one.")
    if ((indices < 0) | (indices >= n)).any():
        raise ValueError(f"A latent of latents= is out of range for d_sae={n}.")
    if not torch.isfinite(values).all():
        raise ValueError("The latent weights hold NaN/inf values.")
    return SparseCode(indices, values)
