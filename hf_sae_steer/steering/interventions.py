"""What hooks do: pure tensor functions from a site's hidden state ``x`` to the steered ``x'``.

The methods are ``docs/method.md`` §2. With ``s`` the per-latent scores and ``pre`` the SAE's
pre-activations of ``x``:

======  =============================================  ======================================
orig    ``x`` unchanged                                baseline
sae     ``act(pre)``                                   the SAE round trip
clamp   ``act(pre)``, +10 on the 5 top-scoring latents  the usual SAE steering
weight  ``act(pre * s)``                               score-weighted pre-activations
swap    ``pre * (act(pre * s) != 0)``                  latents chosen by the weighted code,
                                                       with their unweighted pre-activations
======  =============================================  ======================================

``x' = decode(z')``, or with ``preserve_error`` ``x + decode(z') - decode(act(pre))``, then
``x + strength * (x' - x)``. Nothing here knows about models or hooks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

from hf_sae_steer.sae.base import SAE, Code, SparseCode

Method = Literal["orig", "sae", "clamp", "weight", "swap"]
METHODS: tuple[Method, ...] = get_args(Method)
EditMode = Literal["pin", "add", "multiply"]
EDIT_MODES: tuple[EditMode, ...] = get_args(EditMode)
# Methods whose new code is the plain activation act(pre); clamp adds a constant on top.
_UNWEIGHTED = ("orig", "sae", "clamp")


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
    return scores


class Intervention:
    """One SAE intervention, compiled for repeated calls on a hot path.

    Example:
        >>> step = Intervention(sae, "swap", scores=s)          # doctest: +SKIP
        >>> x_steered = step(x)                                  # x: [batch, seq, d_in]
    """

    def __init__(
        self,
        sae: SAE,
        method: Method = "swap",
        scores: Tensor | None = None,
        *,
        strength: float = 1.0,
        preserve_error: bool = False,
        edits: Sequence[LatentEdit] = (),
        clamp_k: int = 5,
        clamp_value: float = 10.0,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"Unknown method {method!r}; use one of {', '.join(METHODS)}.")
        if not math.isfinite(strength):
            raise ValueError(f"strength must be a finite number, got {strength}.")
        n = sae.d_sae
        if method in ("clamp", "weight", "swap") and scores is None:
            raise ValueError(
                f"Method {method!r} needs scores (one per latent, from FeatureScores)."
            )
        if method == "clamp" and not 0 < clamp_k <= n:
            raise ValueError(f"clamp_k={clamp_k} must be between 1 and d_sae={n}.")
        for edit in edits:
            if not 0 <= edit.index < n:
                raise ValueError(f"Edited latent {edit.index} is out of range for d_sae={n}.")
        self.sae = sae
        self.method = method
        self.scores = None if scores is None else check_scores(scores, n)
        self.strength = float(strength)
        self.preserve_error = preserve_error
        self.edits = tuple(edits)
        self.clamp_k = clamp_k
        self.clamp_value = clamp_value
        self._placed: tuple[torch.device, torch.dtype] | None = None
        self.place(sae.device, sae.dtype)

    @property
    def is_identity(self) -> bool:
        """True when the intervention cannot change ``x`` (so hooks can skip the SAE)."""
        no_latent_change = self.method == "orig" or (self.method == "sae" and self.preserve_error)
        return self.strength == 0.0 or (no_latent_change and not self.edits)

    @property
    def keeps_error(self) -> bool:
        """Whether the result is ``x`` plus a change (the SAE's error term survives)."""
        return self.preserve_error or self.method == "orig"

    def place(self, device: torch.device, dtype: torch.dtype) -> None:
        """Prepare for inputs on ``device`` in ``dtype``: the SAE (a copy if it must move; the
        user's stays put), the scores, and the constant decoder-space vectors."""
        sae = self._sae = self.sae.placed(device, dtype)
        self._s = None if self.scores is None else self.scores.to(device, dtype)
        self._clamp_shift = None
        if self.method == "clamp":
            top = torch.topk(self.scores, self.clamp_k).indices.to(device)
            # Decoding is linear, so +c on fixed latents is one constant change.
            shift = SparseCode(top, torch.full(top.shape, self.clamp_value, device=device))
            self._clamp_shift = sae.decode_change(shift)
        if self.edits:
            self._edit_index = torch.tensor([e.index for e in self.edits], device=device)
            self._edit_value = torch.tensor(
                [e.value for e in self.edits], device=device, dtype=dtype
            )
            self._edit_mode = [e.mode for e in self.edits]
        self._placed = (device, dtype)

    def __call__(self, x: Tensor) -> Tensor:
        if self.is_identity:
            return x
        if self._placed != (x.device, x.dtype):
            self.place(x.device, x.dtype)
        sae = self._sae
        xp, info = sae.preprocess(x)
        pre = sae.encode_pre(xp)
        code = self._new_code(pre)
        changes: list[Tensor] = []  # in the decoder's space, scaled once at the end
        if self.keeps_error:
            x_new = x  # x + dec(z') - dec(z): only the change of latents is decoded
            if self.method not in _UNWEIGHTED:
                old = sae.code(pre)
                diff = code.minus(old) if isinstance(code, SparseCode) else code - old
                changes.append(sae.decode_change(diff))
        else:
            x_new = sae.decode_code(code, info)
        if self._clamp_shift is not None:
            changes.append(self._clamp_shift)
        if self.edits:
            changes.append(self._edit_change(code))
        if changes:
            x_new = x_new + sae.scale_change(sum(changes[1:], changes[0]), info)
        if self.strength == 1.0:
            return x_new
        return x + self.strength * (x_new - x)

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
        if isinstance(code, SparseCode):
            hit = code.indices.unsqueeze(-1) == idx  # [..., k, m]
            current = (code.values.unsqueeze(-1) * hit).sum(dim=-2)
        else:
            current = code.index_select(-1, idx)
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
