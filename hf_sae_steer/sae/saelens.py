"""SAELens folders (``cfg.json`` + ``sae_weights.safetensors``) read into an :class:`SAE`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import Tensor

from hf_sae_steer.sae.base import SAE, build_sae, check_state, check_weights
from hf_sae_steer.sae.files import read_json, read_safetensors
from hf_sae_steer.sae.saelens_format import (
    CFG_FILENAME,
    SAELENS_TENSORS,
    WEIGHTS_FILENAME,
    saelens_config,
    saelens_names,
    saelens_state,
)


def sae_from_saelens(cfg: dict[str, Any], state: dict[str, Tensor], source: str = "") -> SAE:
    """Build an :class:`SAE` from a SAELens config dict and state dict."""
    prefix = f"{source}: " if source else ""
    try:
        sae_cfg = saelens_config(cfg)
        # The file's tensors, then their shapes against the config, before anything is computed
        # on them or allocated at the config's size.
        check_weights(state, [name for name in SAELENS_TENSORS if name in state])
        check_state(sae_cfg, saelens_names(sae_cfg, state))
        return build_sae(sae_cfg, saelens_state(cfg, sae_cfg, state))
    except ValueError as e:
        raise ValueError(f"{prefix}{e}") from None


def load_saelens(path: str | os.PathLike[str]) -> SAE:
    """Load a SAELens folder holding ``cfg.json`` and ``sae_weights.safetensors``."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"SAELens folder not found: {folder}")
    cfg = read_json(folder / CFG_FILENAME)
    state = read_safetensors(folder / WEIGHTS_FILENAME)
    return sae_from_saelens(cfg, state, source=str(folder))
