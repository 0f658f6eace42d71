"""The score artifact and nothing else: the record (:mod:`~hf_sae_steer.scores.record`), what it
recommends and its calibration (:mod:`~hf_sae_steer.scores.recommendation`), the checks made when
one is read (:mod:`~hf_sae_steer.scores.artifact_checks`), its model card
(:mod:`~hf_sae_steer.scores.card`), the reference's CSV (:mod:`~hf_sae_steer.scores.csv_scores`)
and the uncertainty report (:mod:`~hf_sae_steer.scores.uncertainty`). No algorithm, no model."""
