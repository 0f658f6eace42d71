"""Checks of a score artifact's files on loading: a tampered, crafted or foreign artifact is
refused with one line naming the file and the field, never an internal error later in steering.

``steering_config.json`` is read with bounded nesting and each field is checked for its type and
range; the tensors of ``scores.safetensors`` are checked for their shapes, index ranges and
finiteness. This module reads JSON and tensors only: no algorithm.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

FORMAT = "hf_sae_steer/feature_scores"
FORMAT_VERSION = 2  # 2: rule, recommended steering, calibration norms (1 still reads)
# Steering methods an artifact may recommend (the names of hf_sae_steer.steering.interventions).
METHOD_NAMES = ("orig", "sae", "clamp", "weight", "swap", "add", "vector", "suppress", "ablate",
                "attenuate")
AGAIN = "write the artifact again (FeatureScores.save_pretrained, hf-sae-steer score)"
PER_LATENT = ("typical_activation", "mass", "ref_fire_counts", "align_fire_counts")
MAX_EFFECTS, MAX_TOKENS = 1000, 1000  # bounds on the effect in words an artifact may hold


def read_config(path: Path) -> dict[str, Any]:
    """The checked contents of the ``steering_config.json`` at ``path``."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path.parent} has no {path.name}: not a FeatureScores artifact."
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise ValueError(f"{path} is corrupt (nested too deeply): {AGAIN}.") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is corrupt (not valid JSON): {e}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ValueError(f"{path} is not a FeatureScores artifact (format {FORMAT!r}).")
    field = _checker(path)
    version = field("format_version", config.get("format_version", 0), _count, "a whole number")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{path} has format version {version}; this hf_sae_steer reads up to "
            f"{FORMAT_VERSION}. Upgrade hf_sae_steer."
        )
    missing = [key for key in ("sae", "coverage") if key not in config]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}: not a complete FeatureScores "
                         "artifact.")  # fmt: skip
    _check_fields(config, field)
    return config


def _check_fields(config: dict[str, Any], field: Callable[..., Any]) -> None:
    sae = field("sae", config["sae"], _is(dict), "an object (spec, fingerprint, d_sae)")
    for key in ("spec", "fingerprint"):
        field(f"sae.{key}", sae.get(key), _optional(_is(str)), "a string or null")
    field("sae.d_sae", sae.get("d_sae"), _optional(_positive), "a positive whole number")
    field("coverage", config["coverage"], _share, "a number from 0 to 1")
    field("layer", config.get("layer"), _optional(_count), "a whole number >= 0 or null")
    for key in ("site", "rule", "summary", "embedder", "model_id", "scores_sha256"):
        field(key, config.get(key), _optional(_is(str)), "a string or null")
    for key in ("reference", "alignment"):
        prompts = field(key, config.get(key, {}), _is(dict), "an object (size, hash)")
        field(f"{key}.size", prompts.get("size"), _optional(_count), "a whole number >= 0")
        field(f"{key}.hash", prompts.get("hash"), _optional(_is(str)), "a string or null")
    field("options", config.get("options", {}), _is(dict), "an object")
    calibration = config.get("calibration")
    field("calibration", calibration, _optional(_is(dict)), "an object or null")
    for key, value in (calibration or {}).items():
        if key == "fluency":
            _check_fluency(value, field)
        elif key == "away":
            _check_away(value, field)
        else:
            field(f"calibration.{key}", value, _finite, "a finite number")
    for key in ("recommended", "recommended_away"):
        _check_recommendation(key, config.get(key), field)
    report = field("report", config.get("report"), _optional(_is(dict)), "an object or null")
    if report:
        _check_report(report, field)
    effect = field("effect", config.get("effect"), _optional(_is(dict)),
                   "an object (next_token, lens) or null")  # fmt: skip
    if effect:
        _check_effect(effect, field)


def _check_effect(effect: dict[str, Any], field: Callable[..., Any]) -> None:
    """What the recommended steering does in words: lists of (token, value) and token ids."""
    nxt = field("effect.next_token", effect.get("next_token"), _optional(_is(dict)),
                "an object or null")  # fmt: skip
    lens = field("effect.lens", effect.get("lens", []), _is(list), "a list")
    if len(lens) > MAX_EFFECTS:
        raise ValueError(f"'effect.lens' holds {len(lens)} measures, more than {MAX_EFFECTS}; "
                         f"{AGAIN}.")  # fmt: skip
    for where, one in [("effect.next_token", nxt), *((f"effect.lens[{i}]", e)
                                                     for i, e in enumerate(lens))]:  # fmt: skip
        if one is None:
            continue
        field(where, one, _is(dict), "an object (label, raised, lowered, words, ids)")
        field(f"{where}.label", one.get("label"), _is(str), "a string")
        for key in ("raised", "lowered", "words"):
            field(f"{where}.{key}", one.get(key, []), _tokens, "a list of [token, number] pairs")
        for key in ("raised_ids", "lowered_ids", "word_ids"):
            field(f"{where}.{key}", one.get(key, []), _ids, "a list of token ids")


def _check_recommendation(key: str, rec: Any, field: Callable[..., Any]) -> None:
    """A recommended steering (toward, or away from the topic)."""
    field(key, rec, _optional(_is(dict)), "an object (method, strength, preserve_error) or null")
    if rec is None:
        return
    field(f"{key}.method", rec.get("method"), lambda v: v in METHOD_NAMES,
          f"one of {', '.join(METHOD_NAMES)}")  # fmt: skip
    field(f"{key}.strength", rec.get("strength"), _finite, "a finite number")
    field(f"{key}.preserve_error", rec.get("preserve_error"), _is(bool), "true or false")
    norm = rec.get("norm_fraction")
    field(f"{key}.norm_fraction", norm, _optional(_finite), "a finite number or null")


def _check_away(away: Any, field: Callable[..., Any]) -> None:
    """The suppression's calibration (``docs/method.md`` §9): its curve and chosen point."""
    field("calibration.away", away, _is(dict), "an object (method, curve, strength)")
    field("calibration.away.method", away.get("method"), lambda v: v in METHOD_NAMES,
          f"one of {', '.join(METHOD_NAMES)}")  # fmt: skip
    for key in ("target_ratio", "strength"):
        field(f"calibration.away.{key}", away.get(key), _finite, "a finite number")
    for key in ("neutral_prompts", "inviting_prompts"):
        field(f"calibration.away.{key}", away.get(key), _count, "a whole number")
    curve = field("calibration.away.curve", away.get("curve"), _is(list), "a list")
    for i, point in enumerate(curve):
        where = f"calibration.away.curve[{i}]"
        field(where, point, _is(dict), "an object (strength, neutral_forced_ratio, ...)")
        field(f"{where}.strength", point.get("strength"), _finite, "a finite number")
        for key in ("neutral_ratio", "neutral_forced_ratio", "topic_drop", "topic_forced_ratio"):
            field(f"{where}.{key}", point.get(key), _optional(_finite), "a finite number or null")


def _check_fluency(fluency: Any, field: Callable[..., Any]) -> None:
    """The strength calibration (``docs/method.md`` §6): its curve and the point it chose."""
    field("calibration.fluency", fluency, _is(dict), "an object (method, curve, strength)")
    field("calibration.fluency.method", fluency.get("method"), lambda v: v in METHOD_NAMES,
          f"one of {', '.join(METHOD_NAMES)}")  # fmt: skip
    for key in ("target_ratio", "norm_fraction", "strength"):
        field(f"calibration.fluency.{key}", fluency.get(key), _finite, "a finite number")
    field("calibration.fluency.prompts", fluency.get("prompts"), _count, "a whole number")
    curve = field("calibration.fluency.curve", fluency.get("curve"), _is(list), "a list")
    for i, point in enumerate(curve):
        where = f"calibration.fluency.curve[{i}]"
        field(where, point, _is(dict), "an object (norm_fraction, strength, perplexity_ratio)")
        for key in ("norm_fraction", "strength"):
            field(f"{where}.{key}", point.get(key), _finite, "a finite number")
        field(f"{where}.perplexity_ratio", point.get("perplexity_ratio"), _optional(_finite),
              "a finite number or null")  # fmt: skip


def _check_report(report: dict[str, Any], field: Callable[..., Any]) -> None:
    field("report.coverage", report.get("coverage"), _share, "a number from 0 to 1")
    for key in ("n_fired", "d_sae"):
        field(f"report.{key}", report.get(key), _count, "a whole number >= 0")
    field("report.top_k", report.get("top_k", 0), _count, "a whole number >= 0")
    for key in ("top_firing", "thin_support"):
        field(f"report.{key}", report.get(key), _optional(_count), "a whole number or null")
    field("report.effective_latents", report.get("effective_latents"), _finite, "a number")
    for key in ("fvu", "delta_explained"):
        field(f"report.{key}", report.get(key), _optional(_finite), "a number or null")
    warnings = report.get("warnings", [])
    field("report.warnings", warnings, lambda v: isinstance(v, list)
          and all(isinstance(w, str) for w in v), "a list of strings")  # fmt: skip


def check_tensors(path: Path, tensors: dict[str, Tensor], d_sae: int) -> None:
    """Refuse per-latent statistics of the wrong size, chosen latents out of range or without
    their weights, and non-finite values."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{path}: tensor '{name}' holds NaN or infinite values; {AGAIN}.")
        if name in PER_LATENT and tuple(tensor.shape) != (d_sae,):
            raise ValueError(f"{path}: tensor '{name}' must have one value per latent "
                             f"({d_sae}), has shape {tuple(tensor.shape)}; {AGAIN}.")  # fmt: skip
    for name in ("away", "away_gate"):
        away = tensors.get(f"{name}_latents")
        if away is not None and (
            away.is_floating_point() or away.ndim != 1 or not len(away)
            or not (0 <= int(away.min()) and int(away.max()) < d_sae)
        ):  # fmt: skip
            raise ValueError(f"{path}: tensor '{name}_latents' must hold latent indices from 0 "
                             f"to {d_sae - 1}; {AGAIN}.")  # fmt: skip
        odds, bias = tensors.get(f"{name}_log_odds"), tensors.get(f"{name}_bias")
        if (odds is None) != (bias is None) or (odds is not None and (
            away is None or tuple(odds.shape) != tuple(away.shape) or bias.numel() != 1
        )):  # fmt: skip
            raise ValueError(f"{path}: tensors '{name}_log_odds' (one per latent of "
                             f"'{name}_latents') and '{name}_bias' (one value) come together; "
                             f"{AGAIN}.")  # fmt: skip
    if ("latents" in tensors) != ("weights" in tensors):
        raise ValueError(f"{path}: tensors 'latents' and 'weights' come together; {AGAIN}.")
    if "latents" not in tensors:
        return
    latents, weights = tensors["latents"], tensors["weights"]
    if latents.is_floating_point() or latents.ndim != 1 or (
        len(latents) and not (0 <= int(latents.min()) and int(latents.max()) < d_sae)
    ):
        raise ValueError(f"{path}: tensor 'latents' must hold latent indices from 0 to "
                         f"{d_sae - 1}; {AGAIN}.")  # fmt: skip
    if weights.shape != latents.shape:
        shape = tuple(weights.shape)
        raise ValueError(f"{path}: tensor 'weights' must have one weight per chosen latent "
                         f"({len(latents)}), has shape {shape}; {AGAIN}.")  # fmt: skip


def _checker(path: Path) -> Callable[..., Any]:
    def field(name: str, value: Any, ok: Callable[[Any], bool], expected: str) -> Any:
        if not ok(value):
            shown = f"a {type(value).__name__}" if isinstance(value, (list, dict)) else repr(value)
            raise ValueError(f"{path}: '{name}' must be {expected}, got {shown[:60]}; {AGAIN}.")
        return value

    return field


def _tokens(value: Any) -> bool:
    return isinstance(value, list) and len(value) <= MAX_TOKENS and all(
        isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) and _finite(p[1])
        for p in value
    )


def _ids(value: Any) -> bool:
    return isinstance(value, list) and len(value) <= MAX_TOKENS and all(map(_count, value))


def _is(kind: type) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, kind)


def _optional(ok: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or ok(value)


def _finite(value: Any) -> bool:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return number and math.isfinite(value)


def _share(value: Any) -> bool:
    return _finite(value) and 0 <= value <= 1


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _positive(value: Any) -> bool:
    return _count(value) and value > 0
