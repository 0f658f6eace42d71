"""``SAEConfig``: an SAE's shape, activation and preprocessing, and where it was trained."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from hf_sae_steer.sites.names import SiteKind, check_site, hook_name

Activation = Literal["relu", "topk", "jumprelu", "gated"]
Normalize = Literal["none", "layer_norm", "constant_norm_rescale"]
NORMALIZATIONS = ("none", "layer_norm", "constant_norm_rescale")


@dataclass
class SAEConfig:
    """Shape, activation and preprocessing of an SAE, plus where it was trained (when known).

    ``layer``/``site`` say where the SAE reads the model; its TransformerLens hook name is
    derived from them (:attr:`hook_name`). An SAE trained somewhere that is not a site (Gemma
    Scope's attention ``hook_z``, OpenAI's ``mlp_post_act``) has ``site=None`` and keeps the
    original hook name in ``extra["hook_name"]``.
    """

    d_in: int
    d_sae: int
    activation: Activation = "relu"
    k: int | None = None
    normalize_activations: Normalize = "none"
    apply_b_dec_to_input: bool = True
    center_input: bool = False
    layer: int | None = None
    site: SiteKind | None = None
    model_name: str | None = None
    spec: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("d_in", "d_sae"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if self.activation == "topk" and (self.k is None or not 0 < self.k <= self.d_sae):
            raise ValueError(f"A TopK SAE needs 0 < k <= d_sae={self.d_sae}, got k={self.k}.")
        if self.normalize_activations not in NORMALIZATIONS:
            raise ValueError(
                f"Unknown normalize_activations {self.normalize_activations!r}; use none, "
                "layer_norm or constant_norm_rescale."
            )
        if self.site is not None:
            check_site(self.site)

    @property
    def hook_name(self) -> str | None:
        """``blocks.L.hook_<site>``, or the recorded hook of an SAE trained off-site."""
        if self.layer is not None and self.site is not None:
            return hook_name(self.layer, self.site)
        return self.extra.get("hook_name")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe fields (what ``save_pretrained`` and ``repr`` show)."""
        return json.loads(json.dumps(asdict(self), default=str))
