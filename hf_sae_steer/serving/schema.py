"""Old home of the request schema, kept importable for one release: the modules are now
:mod:`.errors` (RequestError), :mod:`.limits` (Limits), :mod:`.sampling` (Sampling),
:mod:`.steering_items` (SteeringItem, parse_steering) and :mod:`.requests` (ParsedRequest,
parse_completion, parse_chat)."""

from __future__ import annotations

from hf_sae_steer.serving.errors import RequestError
from hf_sae_steer.serving.limits import Limits
from hf_sae_steer.serving.requests import (
    ROLES,
    ChatMessage,
    ParsedRequest,
    parse_chat,
    parse_completion,
)
from hf_sae_steer.serving.sampling import Sampling
from hf_sae_steer.serving.steering_items import SteeringItem, parse_steering
from hf_sae_steer.sites.names import SITES
from hf_sae_steer.steering.names import MAX_STRENGTH, METHODS, POSITIONS, STRENGTH_WORDS

__all__ = [
    "MAX_STRENGTH", "METHODS", "POSITIONS", "ROLES", "SITES", "STRENGTH_WORDS", "ChatMessage",
    "Limits", "ParsedRequest", "RequestError", "Sampling", "SteeringItem", "parse_chat",
    "parse_completion", "parse_steering",
]  # fmt: skip
