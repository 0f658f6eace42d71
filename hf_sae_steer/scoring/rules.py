"""Selection rules: how accumulated sums become per-latent scores.

``seed`` is the reference rule (``docs/method.md`` §3): the ``d²``-weighted mean of where a
latent fires, min-max normalised over the latents that fired.
"""

from __future__ import annotations

import torch
from torch import Tensor


def normalise(raw: Tensor, fired: Tensor) -> Tensor:
    """``s = 1 - (r - min r) / max(r - min r)`` over the latents that fired; 0 for the others.

    When every fired latent has the same ``r`` they are all equally close: each gets 1.
    """
    scores = torch.zeros(raw.shape, dtype=torch.float64)
    if fired.any():
        r = raw.double()[fired]
        r = r - r.min()
        top = r.max()
        scores[fired] = 1 - r / top if top > 0 else 1.0
    return scores.float()
