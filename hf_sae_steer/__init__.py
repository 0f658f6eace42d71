"""hf_sae_steer: steer Hugging Face causal LMs towards a topic with sparse autoencoders."""

__version__ = "0.1.0"

from hf_sae_steer.data import load_prompts
from hf_sae_steer.eval_report import EvalResult
from hf_sae_steer.evaluation import evaluate
from hf_sae_steer.interventions import METHODS, Intervention, LatentEdit
from hf_sae_steer.positions import POSITIONS
from hf_sae_steer.processor import SteeringLogitsProcessor
from hf_sae_steer.report import ScoreReport
from hf_sae_steer.sae import SAE, SITES, SAEConfig, load_sae
from hf_sae_steer.scoring import FeatureScores
from hf_sae_steer.sites import ModelLayout, Site, find_layout
from hf_sae_steer.steered import (
    SteeredModel,
    SteeringSpec,
    remove_steering,
    steering_suspended,
)

__all__ = [
    "METHODS",
    "POSITIONS",
    "SAE",
    "SITES",
    "EvalResult",
    "FeatureScores",
    "Intervention",
    "LatentEdit",
    "ModelLayout",
    "SAEConfig",
    "ScoreReport",
    "Site",
    "SteeredModel",
    "SteeringLogitsProcessor",
    "SteeringSpec",
    "__version__",
    "evaluate",
    "find_layout",
    "load_sae",
    "load_prompts",
    "remove_steering",
    "steering_suspended",
]
