"""The packages form layers: each imports only packages below it (``docs/architecture.md``).

Every import between the subpackages and top-level modules of hf_sae_steer counts, lazy ones
inside functions included (a cycle hidden by a lazy import is still a cycle); imports under
``if TYPE_CHECKING:`` and the package root's lazy export table do not. A new package must be
placed in :data:`LAYERS` before it can import or be imported.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hf_sae_steer"

# Bottom up: a package may import any package of a lower layer, none of its own or a higher one.
LAYERS: list[set[str]] = [
    {"_version", "_moved", "atomic", "locking", "models", "distributed"},  # plain utilities
    {"folders", "data", "sites"},  # output folders; prompts in; where hooks go
    {"sae"},  # SAE architectures and checkpoint readers
    {"scores"},  # the score artifact: no algorithm, no model
    {"steering", "generation", "seeded_sampling"},  # hooks that edit hidden states; sampling
    {"scoring"},  # fitting: prompts + model + SAE -> a score artifact
    {"evaluation", "serving"},  # measuring steerings; the OpenAI-compatible server
    {"cli"},  # argument parsing and printing
]


def unit_of(module: str) -> str | None:
    """``hf_sae_steer.scoring.fit`` -> ``scoring``; ``hf_sae_steer.models`` -> ``models``."""
    parts = module.split(".")
    if len(parts) < 2 or parts[0] != "hf_sae_steer":
        return None
    unit = parts[1]
    return unit if (PACKAGE / unit).is_dir() or (PACKAGE / f"{unit}.py").exists() else None


def imported(tree: ast.AST, module: str, is_package: bool) -> list[str]:
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".") if is_package else module.split(".")[:-1]
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.append(base)
            found.extend(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def package_arrows() -> dict[str, set[str]]:
    arrows: dict[str, set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        is_package = path.name == "__init__.py"
        module = module.removesuffix(".__init__")
        if module in ("hf_sae_steer", "hf_sae_steer.__main__"):
            continue  # the lazy export table and the entry point
        source = unit_of(module)
        for target in imported(ast.parse(path.read_text()), module, is_package):
            unit = unit_of(target)
            if unit is not None and unit != source:
                arrows[source].add(unit)
    return arrows


def test_every_package_has_a_layer():
    units = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    units |= {p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__")}
    placed = set().union(*LAYERS)
    assert units - {"_demo"} <= placed, f"not placed in LAYERS: {sorted(units - placed)}"


def test_packages_import_only_lower_layers():
    layer = {unit: i for i, units in enumerate(LAYERS) for unit in units}
    wrong = [
        f"{source} -> {target}"
        for source, targets in sorted(package_arrows().items())
        for target in sorted(targets)
        if layer[target] >= layer[source]
    ]
    assert not wrong, "imports against the layers: " + ", ".join(wrong)


def test_no_cycle_between_packages():
    arrows = package_arrows()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(arrows.get(node, ())):
            assert state.get(nxt) != 1, "package cycle: " + " -> ".join(path + [nxt])
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(arrows):
        if node not in state:
            visit(node, [node])


def test_the_layer_check_sees_lazy_imports_and_skips_type_checking():
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from hf_sae_steer.cli import main\n"
        "def f():\n    from hf_sae_steer.scoring import fit\n"
    )
    found = imported(ast.parse(source), "hf_sae_steer.scores.record", False)
    assert "hf_sae_steer.scoring" in found and "hf_sae_steer.cli" not in found
