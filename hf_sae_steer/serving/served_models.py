"""The model ids a server answers to: the base model's, and steered models, each a steering
served under its own id (``--steered-model NAME=CONCEPT[:OPTIONS]``). Pure Python (no torch).

A client that cannot add body fields (lm-evaluation-harness's loglikelihood requests, most
chat UIs) picks a steering by naming its model: ``model="medical-demo"`` is the base model
steered as ``{"concept": "medical"}`` would steer it; the request's own ``steering`` items, if
any, are added after the model's. ``OPTIONS`` are ``key=value`` pairs separated by commas, the
fields of a concept item: ``strength`` (a number, ``recommended`` or ``calibrated``),
``method``, ``positions``, ``direction`` and ``preserve_error`` (``true``/``false``), e.g.
``no-medical=medical:direction=away`` or ``medical-4=medical:method=add,strength=4``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hf_sae_steer.serving.errors import RequestError
from hf_sae_steer.serving.steering_items import SteeringItem, parse_item

OPTIONS = ("strength", "method", "positions", "direction", "preserve_error")
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/\-]{0,127}$")


def parse_steered_model(value: str) -> tuple[str, SteeringItem]:
    """``NAME=CONCEPT[:OPTIONS]`` as ``(name, item)``; ValueError naming the problem."""
    name, sep, rest = value.partition("=")
    concept, _, options = rest.partition(":")
    if not sep or not name or not concept:
        raise ValueError(
            f"--steered-model takes NAME=CONCEPT[:key=value,...], got {value!r} "
            "(e.g. medical-demo=medical or no-medical=medical:direction=away)."
        )
    if not _MODEL_NAME.match(name):
        raise ValueError(
            f"--steered-model name {name!r} is not allowed; use letters, digits and _.:/- "
            "(at most 128)."
        )
    raw: dict[str, Any] = {"concept": concept}
    for pair in filter(None, options.split(",")):
        key, eq, text = pair.partition("=")
        key = key.strip()
        if not eq or key not in OPTIONS:
            raise ValueError(
                f"--steered-model {name}: option {pair!r} is not key=value with a key of "
                f"{', '.join(OPTIONS)}."
            )
        raw[key] = _option_value(key, text.strip(), name)
    try:
        return name, parse_item(raw, f"--steered-model {name}")
    except RequestError as error:
        raise ValueError(str(error)) from None


def _option_value(key: str, text: str, name: str) -> Any:
    if key == "preserve_error":
        if text.lower() not in ("true", "false"):
            raise ValueError(f"--steered-model {name}: preserve_error is true or false.")
        return text.lower() == "true"
    if key == "strength":
        try:
            return float(text)
        except ValueError:
            return text  # a strength word, or refused by the item's own check
    return text


@dataclass(frozen=True)
class ServedModels:
    """``names``: the base model's ids (the first is the one responses report); ``steered``:
    each steered model's steering items."""

    names: tuple[str, ...]
    steered: Mapping[str, tuple[SteeringItem, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.names:
            raise ValueError("A server needs the base model's name.")
        clash = sorted(set(self.names) & set(self.steered))
        if clash:
            raise ValueError(f"--steered-model {clash[0]!r} is the base model's own name.")

    @classmethod
    def from_args(cls, names: Sequence[str], values: Sequence[str]) -> ServedModels:
        """From the base model's ids and the ``--steered-model`` values."""
        steered: dict[str, tuple[SteeringItem, ...]] = {}
        for value in values:
            name, item = parse_steered_model(value)
            if name in steered:
                raise ValueError(f"--steered-model {name!r} is given twice.")
            steered[name] = (item,)
        return cls(tuple(names), steered)

    def pick(self, model: str | None) -> tuple[str, tuple[SteeringItem, ...]]:
        """The id to report for a request naming ``model`` and the steering that id stands
        for; 404 for an id this server does not serve."""
        if model is None or model in self.names:
            return model or self.names[0], ()
        if model in self.steered:
            return model, self.steered[model]
        known = ", ".join([*self.names[:1], *self.steered])
        raise RequestError(
            f"The model {model!r} is not served here; use one of: {known}.",
            param="model", status=404, code="model_not_found",
        )  # fmt: skip

    def listing(self, created: int, concepts: list[str]) -> list[dict[str, Any]]:
        """``/v1/models``' ``data``: the base model, then each steered model (``parent`` and
        ``root`` name the base, as vLLM lists adapters; ``steering``: its items)."""
        base = self.names[0]
        entry = {"object": "model", "created": created, "owned_by": "hf-sae-steer"}
        out = [{"id": base, **entry, "root": base, "parent": None, "concepts": concepts}]
        for name, items in self.steered.items():
            out.append({
                "id": name, **entry, "root": base, "parent": base,
                "steering": [i.to_dict() for i in items],
            })  # fmt: skip
        return out
