"""SAE formats: one interface (:class:`SAE`), one reader per checkpoint family."""

from hf_sae_steer.sae.architectures import GatedSAE, JumpReLUSAE, ReLUSAE, TopKSAE
from hf_sae_steer.sae.base import SAE, SITES, NormInfo, SAEConfig, build_sae

__all__ = [
    "SAE",
    "SITES",
    "GatedSAE",
    "JumpReLUSAE",
    "NormInfo",
    "ReLUSAE",
    "SAEConfig",
    "TopKSAE",
    "build_sae",
]
