"""The playground's settings, and the text a user types for them (chat commands, web
controls) turned into values: bad text raises :class:`PlaygroundError` with a message that names
the problem and the fix."""

from __future__ import annotations

import math
from dataclasses import dataclass

from hf_sae_steer.steering.names import DIRECTIONS, METHODS, POSITIONS

RECOMMENDED = "recommended"
METHOD_CHOICES = (RECOMMENDED, *METHODS)
MAX_NEW_TOKENS = 512  # a playground turn, not a batch job
MAX_SEED = 2**32 - 1  # seeds of batches are seed * 1_000_003 + b, within torch's 64 bits
SWITCHES = {"on": True, "true": True, "yes": True, "off": False, "false": False, "no": False}


class PlaygroundError(ValueError):
    """Bad input from the user: the message names the problem and the fix, for the UI."""


@dataclass(frozen=True)
class Settings:
    """What a turn generates with. ``None`` strength / preserve_error: the method's default
    (for ``recommended``, the scores' recommendation)."""

    method: str = RECOMMENDED
    strength: float | None = None
    positions: str = "all"
    direction: str = "toward"
    preserve_error: bool | None = None
    max_new_tokens: int = 32
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    seed: int = 0


def _choice(text: str, choices: tuple[str, ...], what: str, hint: str | None = None) -> str:
    """``text`` (trimmed, any case) when it is one of ``choices``, else one clear error."""
    value = text.strip().lower() if isinstance(text, str) else text
    if value not in choices:
        shown = repr(text.strip()) if isinstance(text, str) else text
        hint = hint or "one of " + ", ".join(choices)
        raise PlaygroundError(f"Unknown {what} {shown}; use {hint}.")
    return value


def parse_method(text: str) -> str:
    return _choice(text, METHOD_CHOICES, "method")


def parse_strength(text: str | float | None) -> float | None:
    """A number, or blank / ``default`` for the method's default strength."""
    if text is None or str(text).strip().lower() in ("", "default"):
        return None
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value):
        raise PlaygroundError(
            f"Strength must be a number (e.g. 2) or 'default'; got {str(text).strip()!r}."
        )
    return value


def parse_positions(text: str) -> str:
    return _choice(text, POSITIONS, "positions")


def parse_direction(text: str) -> str:
    return _choice(text, DIRECTIONS, "direction", hint="toward or away")


def parse_switch(text: str | bool | None, what: str) -> bool | None:
    """on / off, or blank / ``default`` (None)."""
    if text is None or isinstance(text, bool):
        return text
    if not isinstance(text, str):
        raise PlaygroundError(f"{what} takes on, off or default; got {text!r}.")
    word = text.strip().lower()
    if word in ("", "default"):
        return None
    if word not in SWITCHES:
        raise PlaygroundError(f"{what} takes on, off or default; got {text.strip()!r}.")
    return SWITCHES[word]


def parse_tokens(text: str | int | float) -> int:
    value = _whole(text)
    if value is None or not 1 <= value <= MAX_NEW_TOKENS:
        raise PlaygroundError(
            f"New tokens must be a whole number from 1 to {MAX_NEW_TOKENS}; got {text!r}."
        )
    return value


def parse_seed(text: str | int) -> int:
    value = _whole(text)
    if value is None or not 0 <= value <= MAX_SEED:
        raise PlaygroundError(f":seed takes a whole number from 0 to {MAX_SEED}; got {text!r}.")
    return value


def _whole(text: str | int | float) -> int | None:
    """A whole number (``7``, ``"7"``, ``7.0`` from a slider), else None (``1.5`` too)."""
    if isinstance(text, bool):
        return None
    if isinstance(text, str) and text.strip().lstrip("+-").isdigit():
        return int(text)
    try:
        value = float(text) if isinstance(text, (str, float)) else text
        return int(value) if isinstance(value, int) or value.is_integer() else None
    except (TypeError, ValueError, OverflowError, AttributeError):
        return None
