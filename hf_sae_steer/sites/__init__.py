"""Where hooks go.

- :mod:`~hf_sae_steer.sites.names`: the five sites, their TransformerLens and OpenAI names.
- :mod:`~hf_sae_steer.sites.layouts`: the decoder blocks of each architecture.
- :mod:`~hf_sae_steer.sites.hooks`: hooks that edit (or read) a site's hidden state.
- :mod:`~hf_sae_steer.sites.resolve`: the one rule that picks ``(layer, site)``.

Kept import-free so that reading the vocabulary costs nothing.
"""
