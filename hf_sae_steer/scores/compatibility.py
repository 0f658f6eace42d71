"""Whether an artifact's scores belong to the SAE in use: its width, and the fingerprint of the
weights it was fitted on."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hf_sae_steer.sae.base import SAE
    from hf_sae_steer.scores.record import FeatureScores


def check_compatible(scores: FeatureScores, sae: SAE, allow_mismatch: bool = False) -> None:
    """Refuse scores computed for another SAE (a different width, or different weights).

    Scores without a fingerprint (imported from CSV) are only checked for width.
    """
    n = int(scores.scores.numel())
    if n != sae.d_sae:
        raise ValueError(
            f"These scores have {n} entries but the SAE has d_sae={sae.d_sae} latents: they belong "
            "to another SAE. Fit scores for this SAE with FeatureScores.fit (no override exists: "
            "the latents cannot be matched)."
        )
    expected = scores.sae_fingerprint
    if expected is None:
        return
    actual = sae.fingerprint()
    if expected != actual:
        fitted_on = scores.sae_spec or "spec unknown"
        message = (
            f"These scores were fitted on SAE {expected} ({fitted_on}), but the SAE in use has "
            f"fingerprint {actual} ({sae.cfg.spec or 'spec unknown'}): its latents may mean "
            "other things. Fit scores for this SAE, or pass allow_score_mismatch=True to "
            "SteeredModel (allow_mismatch=True to check_compatible) to steer anyway."
        )
        if not allow_mismatch:
            raise ValueError(message)
        warnings.warn(message, stacklevel=2)
