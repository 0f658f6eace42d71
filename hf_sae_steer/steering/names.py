"""The steering vocabulary, torch-free: methods, positions, directions and the limits on
strength. Everything that validates steering from outside Python (the server's request schema,
the CLI's flags) imports these names instead of keeping copies."""

from __future__ import annotations

from typing import Literal, get_args

Method = Literal[
    "orig", "sae", "clamp", "weight", "swap", "add", "vector", "suppress", "ablate", "attenuate"
]
METHODS: tuple[Method, ...] = get_args(Method)
# The reference demo's own methods (docs/method.md §2); the rest are this library's additions.
REFERENCE_METHODS: tuple[Method, ...] = ("orig", "sae", "clamp", "weight", "swap")
NEEDS_SCORES: tuple[Method, ...] = ("clamp", "weight", "swap")
# Methods that add a fixed vector to every steered state, so a norm fraction sets their strength.
ADDITIVE: tuple[Method, ...] = ("add", "clamp", "vector")

Positions = Literal["all", "prompt", "generated"]
POSITIONS: tuple[Positions, ...] = get_args(Positions)

# "toward" writes a topic in; "away" takes it out of the text (docs/method.md §9).
Direction = Literal["toward", "away"]
DIRECTIONS: tuple[Direction, ...] = get_args(Direction)
# What can steer away: the topic's latents attenuated where they fire (``suppress``), the topic
# direction projected out (``ablate``), the mean difference subtracted (``vector``), or
# subtracted in proportion to the SAE's posterior that a token is on the topic (``attenuate``).
AWAY_METHODS: tuple[Method, ...] = ("suppress", "ablate", "vector", "attenuate")

# "recommended": the artifact's recommended strength (its method only); "calibrated": the
# strength its fluency calibration chose for the method asked for.
StrengthWord = Literal["recommended", "calibrated"]
STRENGTH_WORDS: tuple[StrengthWord, ...] = get_args(StrengthWord)

# Strength is a multiple of what the method does: beyond this, nothing meaningful is left (and
# float16/bfloat16 overflow long before). Steering refuses more; fitting never recommends more.
MAX_STRENGTH = 1000.0
# An added vector ten times a hidden state's size leaves nothing of the state to steer.
MAX_NORM_FRACTION = 10.0
