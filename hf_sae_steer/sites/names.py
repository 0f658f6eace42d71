"""The site vocabulary: the five hook sites, their TransformerLens hook names and OpenAI locations.

This is the one table every other module reads; nothing else spells a hook name. A site is a
hidden state ``[batch, seq, d_model]`` inside block ``L``:

===========  ====================================  ================================
site         what it is                            OpenAI location at the same layer
===========  ====================================  ================================
resid_pre    block input                           ``resid_post_mlp`` of layer L-1
resid_mid    after attention, before the MLP       ``resid_post_attn``
resid_post   block output                          ``resid_post_mlp``
attn_out     attention output added to the stream  ``resid_delta_attn``
mlp_out      MLP output added to the stream        ``resid_delta_mlp``
===========  ====================================  ================================

The TransformerLens hook of site ``s`` in block ``L`` is ``blocks.L.hook_s``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, get_args

SiteKind = Literal["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"]
SITES: tuple[SiteKind, ...] = get_args(SiteKind)
# The site used when neither the caller, the scores nor the SAE say where to hook.
DEFAULT_SITE: SiteKind = "resid_post"

# OpenAI sparse_autoencoder location -> site at the same layer. ``mlp_post_act`` (the MLP's
# hidden activation, d = 4 x d_model) is not a residual-width site: it maps to None.
OPENAI_LOCATIONS: dict[str, SiteKind | None] = {
    "resid_post_mlp": "resid_post",
    "resid_post_attn": "resid_mid",
    "resid_delta_attn": "attn_out",
    "resid_delta_mlp": "mlp_out",
    "mlp_post_act": None,
}
_HOOK_RE = re.compile(r"^blocks\.(\d+)\.hook_(\w+)$")


def check_site(site: str) -> SiteKind:
    """``site`` itself when it names a site; a clear error otherwise."""
    if site not in SITES:
        raise ValueError(f"Unknown site {site!r}; use one of {', '.join(SITES)}.")
    return site  # type: ignore[return-value]


def hook_name(layer: int, site: str) -> str:
    """The TransformerLens hook of ``site`` in block ``layer``: ``blocks.9.hook_resid_post``."""
    return f"blocks.{layer}.hook_{check_site(site)}"


def parse_hook_name(name: str | None) -> tuple[int | None, SiteKind | None]:
    """``blocks.8.hook_resid_pre`` -> ``(8, "resid_pre")``; other hooks keep only their layer."""
    m = _HOOK_RE.match(name or "")
    if m:
        kind = m[2]
        return int(m[1]), kind if kind in SITES else None  # type: ignore[return-value]
    m = re.match(r"^blocks\.(\d+)\.", name or "")
    return (int(m[1]), None) if m else (None, None)


@dataclass(frozen=True)
class Site:
    """A hook point: ``kind`` (one of :data:`SITES`) in block ``layer``."""

    layer: int
    kind: SiteKind

    def __post_init__(self) -> None:
        check_site(self.kind)

    @property
    def hook_name(self) -> str:
        """The TransformerLens name of this site, as SAELens configs spell it."""
        return hook_name(self.layer, self.kind)
