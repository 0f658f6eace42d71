"""Scoring SAE latents against a topic.

- :mod:`~hf_sae_steer.scoring.record`: the :class:`FeatureScores` record and its artifact (a
  leaf: data, files, the SAE check; no algorithm).
- :mod:`~hf_sae_steer.scoring.uncertainty`: the uncertainty report.
- :mod:`~hf_sae_steer.scoring.prompts`, :mod:`~hf_sae_steer.scoring.embedders`: prompt sets
  and sentence embeddings.
- :mod:`~hf_sae_steer.scoring.passes`: batched passes over prompts that produce sums.
- :mod:`~hf_sae_steer.scoring.rules`: selection rules turning sums into scores.
- :mod:`~hf_sae_steer.scoring.fit`: the fitting procedure, ``FeatureScores.fit``.
- :mod:`~hf_sae_steer.scoring.examples`: what fires a latent most.
"""

from hf_sae_steer.scoring.fit import fit
from hf_sae_steer.scoring.record import FeatureScores

# The record stays free of algorithms; the fitting procedure is attached here, where both exist.
FeatureScores.fit = staticmethod(fit)  # type: ignore[assignment]

__all__ = ["FeatureScores", "fit"]
