"""hf_sae_steer: steer Hugging Face causal LMs towards a topic with sparse autoencoders.

The public API is exported lazily: ``import hf_sae_steer`` loads no torch, and each name is
imported from its module on first use.

>>> from hf_sae_steer import FeatureScores, SteeredModel, load_sae   # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from hf_sae_steer import _moved
from hf_sae_steer._version import __version__

_moved.install()  # the import paths 0.4 moved keep working for one release

# public name -> the module that defines it
_EXPORTS = {
    "SAE": "hf_sae_steer.sae.base",
    "SAEConfig": "hf_sae_steer.sae.config",
    "load_sae": "hf_sae_steer.sae.loading",
    "SITES": "hf_sae_steer.sites.names",
    "Site": "hf_sae_steer.sites.names",
    "ModelLayout": "hf_sae_steer.sites.layouts",
    "find_layout": "hf_sae_steer.sites.layouts",
    "resolve_site": "hf_sae_steer.sites.resolve",
    "METHODS": "hf_sae_steer.steering.names",
    "Intervention": "hf_sae_steer.steering.interventions",
    "LatentEdit": "hf_sae_steer.steering.interventions",
    "POSITIONS": "hf_sae_steer.steering.names",
    "DIRECTIONS": "hf_sae_steer.steering.names",
    "SteeredModel": "hf_sae_steer.steering.steered",
    "BatchedSteering": "hf_sae_steer.steering.batched",
    "BatchRows": "hf_sae_steer.steering.batched",
    "SiteEdit": "hf_sae_steer.steering.batched",
    "SteeringSpec": "hf_sae_steer.steering.steered",
    "SteeringLogitsProcessor": "hf_sae_steer.steering.guidance",
    "remove_steering": "hf_sae_steer.steering.live",
    "steering_suspended": "hf_sae_steer.steering.live",
    "steering_effect": "hf_sae_steer.steering.effect",
    "effect_of": "hf_sae_steer.steering.effect",
    "SteeringEffect": "hf_sae_steer.scores.effect",
    "TokenEffect": "hf_sae_steer.scores.effect",
    "FeatureScores": "hf_sae_steer.scoring.fit",
    "fit_scores": "hf_sae_steer.scoring.fit",
    "Recommendation": "hf_sae_steer.scores.recommendation",
    "FluencyCalibration": "hf_sae_steer.scores.recommendation",
    "ScoreReport": "hf_sae_steer.scores.uncertainty",
    "load_prompts": "hf_sae_steer.data.prompts",
    "open_prompts": "hf_sae_steer.data.sources",
    "CheckpointError": "hf_sae_steer.scoring.walk.checkpoint",
    "load_scores": "hf_sae_steer.scores.record",
    "evaluate": "hf_sae_steer.evaluation.sweep",
    "EvalResult": "hf_sae_steer.evaluation.result",
}

__all__ = [
    "__version__",
    "BatchRows",
    "BatchedSteering",
    "CheckpointError",
    "DIRECTIONS",
    "EvalResult",
    "FeatureScores",
    "FluencyCalibration",
    "Intervention",
    "LatentEdit",
    "METHODS",
    "ModelLayout",
    "POSITIONS",
    "Recommendation",
    "SAE",
    "SAEConfig",
    "SITES",
    "ScoreReport",
    "Site",
    "SiteEdit",
    "SteeredModel",
    "SteeringEffect",
    "SteeringLogitsProcessor",
    "SteeringSpec",
    "TokenEffect",
    "effect_of",
    "evaluate",
    "find_layout",
    "fit_scores",
    "load_prompts",
    "load_sae",
    "load_scores",
    "open_prompts",
    "remove_steering",
    "resolve_site",
    "steering_effect",
    "steering_suspended",
]

if TYPE_CHECKING:
    from hf_sae_steer.data.prompts import load_prompts
    from hf_sae_steer.data.sources import open_prompts
    from hf_sae_steer.evaluation.result import EvalResult
    from hf_sae_steer.evaluation.sweep import evaluate
    from hf_sae_steer.sae.base import SAE
    from hf_sae_steer.sae.config import SAEConfig
    from hf_sae_steer.sae.loading import load_sae
    from hf_sae_steer.scores.effect import SteeringEffect, TokenEffect
    from hf_sae_steer.scores.recommendation import FluencyCalibration, Recommendation
    from hf_sae_steer.scores.record import load_scores
    from hf_sae_steer.scores.uncertainty import ScoreReport
    from hf_sae_steer.scoring.fit import FeatureScores, fit_scores
    from hf_sae_steer.scoring.walk.checkpoint import CheckpointError
    from hf_sae_steer.sites.layouts import ModelLayout, find_layout
    from hf_sae_steer.sites.names import SITES, Site
    from hf_sae_steer.sites.resolve import resolve_site
    from hf_sae_steer.steering.batched import BatchedSteering, BatchRows, SiteEdit
    from hf_sae_steer.steering.effect import effect_of, steering_effect
    from hf_sae_steer.steering.guidance import SteeringLogitsProcessor
    from hf_sae_steer.steering.interventions import Intervention, LatentEdit
    from hf_sae_steer.steering.live import remove_steering, steering_suspended
    from hf_sae_steer.steering.names import DIRECTIONS, METHODS, POSITIONS
    from hf_sae_steer.steering.steered import SteeredModel, SteeringSpec


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hf_sae_steer' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
