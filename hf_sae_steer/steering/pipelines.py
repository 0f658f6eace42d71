"""Let ``pipeline("text-generation", model=steered)`` accept a SteeredModel without logging
"model 'SteeredModel' is not supported".

transformers checks the model's class name against a list that already admits wrappers (PEFT's);
we add ours the same way. Importing ``transformers.pipelines`` ourselves costs seconds, so when it
is not loaded yet we register the moment it is (a one-shot import hook), whatever the order in
which the user builds the SteeredModel and imports ``pipeline``.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType
from typing import Any

TARGET = "transformers.pipelines.base"
NAME = "SteeredModel"


def register_with_pipelines() -> None:
    """Admit SteeredModel to the text-generation pipeline now, or as soon as it is imported."""
    module = sys.modules.get(TARGET)
    if module is not None:
        _admit(module)
    elif not any(isinstance(finder, _AdmitOnImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AdmitOnImport())


def _admit(module: ModuleType) -> None:
    tasks = getattr(module, "SUPPORTED_PEFT_TASKS", None)
    if isinstance(tasks, dict):
        names = tasks.setdefault("text-generation", [])
        if NAME not in names:
            names.append(NAME)


class _AdmitOnImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself; when ``transformers.pipelines.base`` is about to load, wraps the
    real loader so the module is admitted right after it executes, then leaves sys.meta_path."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != TARGET:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _AdmittingLoader(spec.loader)
        return spec


class _AdmittingLoader(importlib.abc.Loader):
    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        _admit(module)

    def __getattr__(self, name: str) -> Any:  # get_source, get_resource_reader, ...
        return getattr(self.loader, name)
