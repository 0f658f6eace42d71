"""Import paths that 0.4 moved, kept working for one release (``docs/api.md``, "Moved in 0.4").

A finder answers ``import hf_sae_steer.scoring.record`` (say) with the module that now lives at
``hf_sae_steer.scores.record``: the same module object, not a copy, with a DeprecationWarning.
Names that moved between modules whose paths stayed are answered by :func:`moved_names`.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any

# old module path -> new module path
MODULES = {
    "hf_sae_steer.scoring.prompts": "hf_sae_steer.data.prompts",
    "hf_sae_steer.scoring.prompt_files": "hf_sae_steer.data.prompt_files",
    "hf_sae_steer.scoring.sources": "hf_sae_steer.data.sources",
    "hf_sae_steer.scoring.long_prompts": "hf_sae_steer.data.long_prompts",
    "hf_sae_steer.scoring.embedders": "hf_sae_steer.data.embedders",
    "hf_sae_steer.scoring.record": "hf_sae_steer.scores.record",
    "hf_sae_steer.scoring.card": "hf_sae_steer.scores.card",
    "hf_sae_steer.scoring.csv_scores": "hf_sae_steer.scores.csv_scores",
    "hf_sae_steer.scoring.artifact_checks": "hf_sae_steer.scores.artifact_checks",
    "hf_sae_steer.scoring.uncertainty": "hf_sae_steer.scores.uncertainty",
    "hf_sae_steer.scoring.passes": "hf_sae_steer.scoring.walk.passes",
    "hf_sae_steer.scoring.accumulation": "hf_sae_steer.scoring.walk.accumulation",
    "hf_sae_steer.scoring.checkpoint": "hf_sae_steer.scoring.walk.checkpoint",
    "hf_sae_steer.scoring.run_lock": "hf_sae_steer.scoring.walk.run_lock",
    "hf_sae_steer.scoring.strength": "hf_sae_steer.scoring.calibration",
    "hf_sae_steer.scoring.selection": "hf_sae_steer.scoring.rules",
    "hf_sae_steer.scoring.output_aware": "hf_sae_steer.scoring.rules.output",
    "hf_sae_steer.scoring.trained": "hf_sae_steer.scoring.rules.trained",
    "hf_sae_steer.scoring.objective": "hf_sae_steer.scoring.rules.objective",
}


def _warn(old: str, new: str) -> None:
    warnings.warn(
        f"{old} moved to {new} in hf_sae_steer 0.4; the old path goes in 0.5.",
        DeprecationWarning,
        stacklevel=3,
    )


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None

    def exec_module(self, module: ModuleType) -> None:
        _warn(module.__name__, self.target)
        # The import system returns whatever sys.modules holds once this returns: the new module.
        sys.modules[module.__name__] = importlib.import_module(self.target)


class MovedModules(importlib.abc.MetaPathFinder):
    """Finds the old paths of :data:`MODULES`."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        new = MODULES.get(name)
        if new is None:
            return None
        return importlib.machinery.ModuleSpec(name, _Alias(new))


def install() -> None:
    if not any(isinstance(finder, MovedModules) for finder in sys.meta_path):
        sys.meta_path.append(MovedModules())


def moved_names(module: str, names: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` answering ``names`` (old name -> the module that now has it)."""

    def __getattr__(name: str) -> Any:
        new = names.get(name)
        if new is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        _warn(f"{module}.{name}", f"{new}.{name}")
        return getattr(importlib.import_module(new), name)

    return __getattr__
