"""Measuring steering: the sweep (:func:`~hf_sae_steer.evaluation.sweep.evaluate`), its
measures (:mod:`~hf_sae_steer.evaluation.metrics`), the result table and plot
(:mod:`~hf_sae_steer.evaluation.result`) and the ``EVAL.md`` writer
(:mod:`~hf_sae_steer.evaluation.eval_md`)."""
