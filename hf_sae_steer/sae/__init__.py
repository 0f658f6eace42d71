"""SAE formats: one interface (:class:`SAE`), one reader per checkpoint family."""

from hf_sae_steer.sae.architectures import GatedSAE, JumpReLUSAE, ReLUSAE, TopKSAE
from hf_sae_steer.sae.base import SAE, SITES, NormInfo, SAEConfig, build_sae
from hf_sae_steer.sae.gemmascope import gemmascope_to_sae, load_gemmascope
from hf_sae_steer.sae.loading import load_local, load_sae
from hf_sae_steer.sae.openai import (
    load_openai,
    load_openai_name,
    openai_state_to_sae,
    openai_url,
    parse_openai_name,
)
from hf_sae_steer.sae.saelens import load_saelens, parse_hook_name, sae_from_saelens, save_saelens

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
    "gemmascope_to_sae",
    "load_gemmascope",
    "load_local",
    "load_openai",
    "load_openai_name",
    "load_sae",
    "load_saelens",
    "openai_state_to_sae",
    "openai_url",
    "parse_hook_name",
    "parse_openai_name",
    "sae_from_saelens",
    "save_saelens",
]
