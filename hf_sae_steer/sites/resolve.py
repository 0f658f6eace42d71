"""The one rule that decides where an SAE reads and writes the model: ``(layer, site)``.

Every caller (steering, scoring, inspection, evaluation, the CLI) asks :func:`resolve_site`.
Each of layer and site is taken from the first source that names it:

1. the explicit argument (``layer=``, ``site=``);
2. the score artifact, which records where its scores were fitted;
3. the SAE's config, which records where it was trained;
4. for the site only: ``resid_post`` (:data:`DEFAULT_SITE`), the block output, where most
   published residual SAEs read. The layer has no fallback: without one it is an error.

Disagreements between the sources are allowed (steering another layer is an experiment) but
warned about, because latents and scores may not carry over.
"""

from __future__ import annotations

import warnings
from typing import Protocol

from hf_sae_steer.sites.layouts import ModelLayout
from hf_sae_steer.sites.names import DEFAULT_SITE, Site, check_site, hook_name


class Located(Protocol):
    """Anything that records a layer and a site: an SAE's config, a score artifact."""

    layer: int | None
    site: str | None


def resolve_site(
    layout: ModelLayout,
    layer: int | None = None,
    site: str | None = None,
    *,
    scores: Located | None = None,
    trained: Located | None = None,
    warn: bool = True,
) -> Site:
    """The site to hook in ``layout``'s model (see the module docstring for the rule).

    ``scores`` is a score artifact (its ``layer``/``site``), ``trained`` an SAE's config. Negative
    layers count from the end, as in Python. With ``warn`` a :class:`UserWarning` names every
    source that disagrees with the result.
    """
    sources = [("argument", layer, site), ("scores", *_where(scores)), ("SAE", *_where(trained))]
    chosen_layer = next((src[1] for src in sources if src[1] is not None), None)
    chosen_site = next((src[2] for src in sources if src[2] is not None), DEFAULT_SITE)
    if chosen_layer is None:
        raise ValueError(
            "No layer given, and neither the scores nor the SAE's config say where the SAE "
            "belongs: pass layer=<block index>."
        )
    layout.check_layer(chosen_layer)
    result = Site(chosen_layer % layout.n_layers, check_site(chosen_site))
    if warn:
        _warn_disagreements(result, scores, trained)
    return result


def _where(obj: Located | None) -> tuple[int | None, str | None]:
    return (None, None) if obj is None else (obj.layer, obj.site)


def _warn_disagreements(site: Site, scores: Located | None, trained: Located | None) -> None:
    if scores is not None:
        for name, given, known in (
            ("layer", site.layer, scores.layer),
            ("site", site.kind, scores.site),
        ):
            if known is not None and given != known:
                warnings.warn(
                    f"These scores were fitted at {name}={known!r} but you use {name}={given!r}; "
                    "the latents' scores may not carry over.",
                    stacklevel=4,
                )
    if trained is not None and trained.site is not None and trained.layer is not None:
        if (trained.layer, trained.site) != (site.layer, site.kind):
            warnings.warn(
                f"This SAE was trained on {hook_name(trained.layer, trained.site)} but is used at "
                f"{site.hook_name}; its latents may mean little there.",
                stacklevel=4,
            )
