"""One walk over the prompts (``docs/method.md`` §3, ``docs/scaling.md``): batched passes to the
SAE's site and their sums (:mod:`~hf_sae_steer.scoring.walk.passes`), accumulated over chunks and
processes (:mod:`~hf_sae_steer.scoring.walk.accumulation`), checkpointed
(:mod:`~hf_sae_steer.scoring.walk.checkpoint`) under one run's lock
(:mod:`~hf_sae_steer.scoring.walk.run_lock`)."""
