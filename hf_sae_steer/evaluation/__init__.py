"""Measuring steering: the sweep (:func:`~hf_sae_steer.evaluation.sweep.evaluate`), its
measures (:mod:`~hf_sae_steer.evaluation.metrics`), the result table and plot
(:mod:`~hf_sae_steer.evaluation.result`), judges of a topic from another source
(:mod:`~hf_sae_steer.evaluation.judges`, :mod:`~hf_sae_steer.evaluation.remeasure`) and the
demo's ``EVAL.md`` (:mod:`~hf_sae_steer.evaluation.demo_eval`,
:mod:`~hf_sae_steer.evaluation.eval_md`)."""
