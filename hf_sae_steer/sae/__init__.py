"""SAE formats: one interface (:class:`SAE`), one module per architecture, one reader per
checkpoint family, and :func:`load_sae` in front of them all.

Importing this package registers every architecture (``relu``, ``topk``, ``jumprelu``,
``gated``) with :func:`~hf_sae_steer.sae.base.register_architecture`.
"""

from hf_sae_steer.sae.base import (
    ARCHITECTURES,
    SAE,
    Code,
    NormInfo,
    SparseCode,
    build_sae,
    register_architecture,
)
from hf_sae_steer.sae.config import SAEConfig
from hf_sae_steer.sae.gated import GatedSAE
from hf_sae_steer.sae.gemmascope import gemmascope_to_sae, load_gemmascope
from hf_sae_steer.sae.jumprelu import JumpReLUSAE
from hf_sae_steer.sae.loading import load_local, load_sae
from hf_sae_steer.sae.openai import (
    load_openai,
    load_openai_name,
    openai_state_to_sae,
    openai_url,
    parse_openai_name,
)
from hf_sae_steer.sae.relu import ReLUSAE
from hf_sae_steer.sae.saelens import load_saelens, sae_from_saelens
from hf_sae_steer.sae.topk import TopKSAE

__all__ = [
    "ARCHITECTURES",
    "SAE",
    "Code",
    "GatedSAE",
    "JumpReLUSAE",
    "NormInfo",
    "ReLUSAE",
    "SAEConfig",
    "SparseCode",
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
    "parse_openai_name",
    "register_architecture",
    "sae_from_saelens",
]
