"""Fitting: prompts, a model and an SAE in, a score artifact out (``docs/method.md`` §3, §6).

- :mod:`~hf_sae_steer.scoring.fit`: :func:`fit_scores` (also ``FeatureScores.fit``), the
  orchestration; :mod:`~hf_sae_steer.scoring.checks`: what is checked before any work;
  :mod:`~hf_sae_steer.scoring.from_sums`: the record of a finished run;
  :mod:`~hf_sae_steer.scoring.calibration`: the strength calibrated per topic.
- :mod:`~hf_sae_steer.scoring.walk`: one pass over the prompts: sums, many processes,
  checkpoints, the run lock.
- :mod:`~hf_sae_steer.scoring.rules`: the selection rules, one module per family, registered.
- :mod:`~hf_sae_steer.scoring.examples`: what fires a latent most.
"""

from hf_sae_steer._moved import moved_names

# 0.3's `from hf_sae_steer.scoring import FeatureScores, fit`, kept for one release.
__getattr__ = moved_names(__name__, dict.fromkeys(["FeatureScores"], "hf_sae_steer.scoring.fit"))
