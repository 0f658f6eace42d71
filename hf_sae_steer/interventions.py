"""What hooks do: pure tensor functions from a site's hidden state ``x`` to the steered ``x'``.

The methods are METHOD.md §2. With ``s`` the per-latent scores and ``pre`` the SAE's
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

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from hf_sae_steer.sae.base import SAE, NormInfo

METHODS = ("orig", "sae", "clamp", "weight", "swap")
EditMode = Literal["pin", "add", "multiply"]
EDIT_MODES = ("pin", "add", "multiply")
Code = Tensor | tuple[Tensor, Tensor]  # a dense code, or (indices, values) of a k-sparse one


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
        method: str = "swap",
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
        self._place(sae.device, sae.dtype)

    @property
    def is_identity(self) -> bool:
        """True when the intervention cannot change ``x`` (so hooks can skip the SAE)."""
        no_latent_change = self.method == "orig" or (self.method == "sae" and self.preserve_error)
        return self.strength == 0.0 or (no_latent_change and not self.edits)

    def _place(self, device: torch.device, dtype: torch.dtype) -> None:
        """Keep a copy of the SAE on the hooked block's device and dtype (the user's stays put)."""
        sae = self.sae
        if sae.device != device or sae.dtype != dtype:
            sae = copy.deepcopy(self.sae).to(device=device, dtype=dtype)
        self._sae = sae
        self._s = None if self.scores is None else self.scores.to(device, dtype)
        self._clamp_shift = None
        if self.method == "clamp":
            top = torch.topk(self.scores, self.clamp_k).indices.to(device)
            # Decoding is linear, so +c on fixed latents is one constant vector in x-space.
            self._clamp_shift = self.clamp_value * sae.W_dec[top].sum(dim=0)
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
            self._place(x.device, x.dtype)
        sae = self._sae
        xp, info = sae.preprocess(x)
        pre = sae.encode_pre(xp)
        code, delta, steered = (self._sparse if sae.k is not None else self._dense)(pre, info)
        if self._clamp_shift is not None:
            delta = self._clamp_shift if delta is None else delta + self._clamp_shift
        if self.edits:
            edit = self._edit_delta(code)
            delta = edit if delta is None else delta + edit
        x_new = x if steered is None else steered
        if delta is not None:
            # delta lives in the decoder's space; only the scale of the preprocessing applies.
            x_new = x_new + (delta * info.scale if info.scale is not None else delta)
        if self.strength == 1.0:
            return x_new
        return x + self.strength * (x_new - x)

    # -- methods -------------------------------------------------------------------------
    # Each path returns (code, delta, steered). ``steered`` is decode(z') in x-space, or None
    # when the result is x plus ``delta`` (preserve_error, or orig with direct edits).

    @property
    def _keeps_error(self) -> bool:
        return self.preserve_error or self.method == "orig"

    def _dense(self, pre: Tensor, info: NormInfo) -> tuple[Tensor, Tensor | None, Tensor | None]:
        sae, m = self._sae, self.method
        unweighted = m in ("orig", "sae", "clamp")
        if unweighted:
            z_new = sae.activate(pre)
        elif m == "weight":
            z_new = sae.activate(pre * self._s)
        else:
            z_new = pre * (sae.activate(pre * self._s) != 0)
        if not self._keeps_error:
            return z_new, None, sae.decode(z_new, info)
        if unweighted:
            return z_new, None, None
        return z_new, (z_new - sae.activate(pre)) @ sae.W_dec, None

    def _sparse(self, pre: Tensor, info: NormInfo) -> tuple[Code, Tensor | None, Tensor | None]:
        """TopK SAEs: only the selected latents are decoded (embedding_bag, no d_sae matmul)."""
        sae, m = self._sae, self.method
        unweighted = m in ("orig", "sae", "clamp")
        if unweighted:
            new_idx, new_val = sae.activate_sparse(pre)
        else:
            new_idx, w_val = sae.activate_sparse(pre * self._s)
            new_val = w_val if m == "weight" else pre.gather(-1, new_idx) * (w_val != 0)
        code = (new_idx, new_val)
        if not self._keeps_error:
            return code, None, sae.decode_sparse(new_idx, new_val, info)
        if unweighted:
            return code, None, None
        # Only the kept error term needs the unweighted code: x + dec(z') - dec(z).
        idx, val = sae.activate_sparse(pre)
        both = torch.cat([new_idx, idx], dim=-1)
        return code, sae.decode_delta_sparse(both, torch.cat([new_val, -val], dim=-1)), None

    def _edit_delta(self, code: Code) -> Tensor:
        """Decoder-space change from the direct latent edits, applied on top of the method."""
        idx = self._edit_index
        if isinstance(code, tuple):
            sel_idx, sel_val = code
            hit = sel_idx.unsqueeze(-1) == idx  # [..., k, m]
            current = (sel_val.unsqueeze(-1) * hit).sum(dim=-2)
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
