"""Prompts in, before any model: prompt files (:mod:`~hf_sae_steer.data.prompt_files`), prompt
sets from files, datasets and lists (:mod:`~hf_sae_steer.data.prompts`), streamed sources
(:mod:`~hf_sae_steer.data.sources`), long-prompt windows (:mod:`~hf_sae_steer.data.long_prompts`)
and sentence embedders (:mod:`~hf_sae_steer.data.embedders`)."""
