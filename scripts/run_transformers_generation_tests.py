"""Run transformers' own generation tests (``GenerationTesterMixin``) against steered models.

Every GPT-2 and Llama model the tests build is steered at construction (``swap``, a random TopK
SAE, the middle block, strength 1), once per ``positions`` mode, and once unsteered as the
baseline. The table printed at the end counts passed / failed / skipped per model and mode and
names every test that passes unsteered but fails steered.

The tests are not in the transformers wheel. The script downloads the sdist of the installed
version with pip; when the sdist lacks ``tests/generation`` (it ships only the top-level
``tests/test_*.py`` files), pass a transformers source checkout with ``--source``, ideally at the
tag of the installed version (``git clone --branch v<version> --depth 1 ...``). Several
``--source`` folders overlay in order, and the sdist's files come last, so the version-matched
top-level files win; helper modules the run needs but no source has are stubbed (they belong to
export and distributed tests, which are not run).

Not part of CI. Example::

    python scripts/run_transformers_generation_tests.py --source ~/src/transformers
    python scripts/run_transformers_generation_tests.py --source DIR --modes none,generated \\
        -k continue_from
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from importlib import metadata
from pathlib import Path

MODES = ("none", "all", "generated", "prompt")
MODEL_TESTS = (
    "tests/models/gpt2/test_modeling_gpt2.py",
    "tests/models/llama/test_modeling_llama.py",
)
TEST_DEPS = ("parameterized",)
STUBS = {
    "tests/exporters/__init__.py": "",
    "tests/exporters/test_export.py": "class ExportTesterMixin:  # stub: not run here\n    pass\n",
    "tests/distributed_testing_utils.py": (
        "def __getattr__(name):  # stub: distributed tests are not run here\n"
        "    def missing(*args, **kwargs):\n"
        "        raise RuntimeError(name + ': distributed tests are not run by this harness')\n"
        "    return missing\n"
    ),
}

# The plugin pytest loads: keeps only GenerationTesterMixin's tests and steers every generative
# model at construction (PreTrainedModel.post_init runs at the end of each model's __init__).
PLUGIN = """
import os

import pytest
import torch

MODE = os.environ["HF_SAE_STEER_POSITIONS"]
_SAES = {}


def pytest_collection_modifyitems(config, items):
    keep = []
    for item in items:
        mro = getattr(getattr(item, "cls", None), "__mro__", ())
        mixin = next((c for c in mro if c.__name__ == "GenerationTesterMixin"), None)
        if mixin is not None and item.name in vars(mixin):
            keep.append(item)
    config.hook.pytest_deselected(items=[i for i in items if i not in keep])
    items[:] = keep


def _sae(d_in, folder):
    if d_in not in _SAES:
        from hf_sae_steer import load_sae

        g = torch.Generator().manual_seed(d_in)
        n = 4 * d_in
        state = {
            "pre_bias": torch.randn(d_in, generator=g) * 0.1,
            "encoder.weight": torch.randn(n, d_in, generator=g) / d_in**0.5,
            "latent_bias": torch.randn(n, generator=g) * 0.1,
            "decoder.weight": torch.randn(d_in, n, generator=g) / n**0.5,
            "activation": "TopK",
            "activation_state_dict": {"k": max(1, d_in // 4), "postact_fn": "ReLU"},
        }
        path = os.path.join(folder, f"topk_{d_in}.pt")
        torch.save(state, path)
        scores = torch.rand(n, generator=g)
        _SAES[d_in] = (load_sae(path), scores)
    return _SAES[d_in]


if MODE != "none":
    from transformers import GenerationMixin, PreTrainedModel

    from hf_sae_steer import SteeredModel

    _original_post_init = PreTrainedModel.post_init
    _folder = os.environ["HF_SAE_STEER_WORK"]

    def _steered_post_init(self, *args, **kwargs):
        _original_post_init(self, *args, **kwargs)
        if not isinstance(self, GenerationMixin):
            return  # a base model inside a generative one: steered through its owner
        text = self.config.get_text_config()
        sae, scores = _sae(text.hidden_size, _folder)
        SteeredModel(self, sae, layer=text.num_hidden_layers // 2, method="swap",
                     scores=scores, strength=1.0, positions=MODE)

    PreTrainedModel.post_init = _steered_post_init
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--source",
        action="append",
        default=[],
        type=Path,
        help="a transformers source checkout (repeatable; later ones overlay)",
    )
    parser.add_argument(
        "--modes",
        default=",".join(MODES),
        help="comma-separated: none (unsteered), all, generated, prompt",
    )
    parser.add_argument("--work", type=Path, help="keep the assembled run here (default: temp)")
    parser.add_argument("--no-sdist", action="store_true", help="do not download the sdist")
    parser.add_argument("-k", dest="keyword", help="pytest -k expression")
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    if bad := [m for m in modes if m not in MODES]:
        parser.error(f"unknown mode(s) {', '.join(bad)}; use {', '.join(MODES)}")
    version = metadata.version("transformers")
    work = args.work or Path(tempfile.mkdtemp(prefix="hf_sae_steer_tf_tests_"))
    work.mkdir(parents=True, exist_ok=True)
    sources = [p.expanduser().resolve() for p in args.source]
    if not args.no_sdist:
        sources.append(_sdist(version, work / "sdist"))
    run = work / "run"
    missing = _assemble(sources, run)
    if missing:
        print(
            f"transformers {version}: no source has {', '.join(missing)} (the sdist ships only "
            f"tests/test_*.py). Clone transformers at tag v{version} and pass --source PATH.",
            file=sys.stderr,
        )
        return 2
    deps = work / "deps"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--target", str(deps), *TEST_DEPS],
        check=True,
    )
    results = {mode: _run(mode, run, deps, args.keyword) for mode in modes}
    _report(version, results)
    return 0


def _sdist(version: str, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / f"transformers-{version}.tar.gz"
    if not archive.exists():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"transformers=={version}",
                "-d",
                str(folder),
            ],
            check=True,
        )
    root = folder / f"transformers-{version}"
    if not root.exists():
        with tarfile.open(archive) as tar:
            tar.extractall(folder, filter="data")
    return root


def _assemble(sources: list[Path], run: Path) -> list[str]:
    """Copy tests (only the GPT-2 and Llama model folders) and the helpers they import."""
    if run.exists():
        shutil.rmtree(run)
    (run / "tests").mkdir(parents=True)
    for source in sources:
        for path in sorted((source / "tests").rglob("*")):
            rel = path.relative_to(source)
            parts = rel.parts
            if path.is_dir() or "__pycache__" in parts:
                continue
            if len(parts) > 3 and parts[1] == "models" and parts[2] not in ("gpt2", "llama"):
                continue
            if len(parts) > 1 and parts[1] == "fixtures":
                continue
            (run / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, run / rel)
        for helper in ("utils/test_module", "utils/fetch_hub_objects_for_ci.py"):
            if (source / helper).is_dir():
                shutil.copytree(source / helper, run / helper, dirs_exist_ok=True)
            elif (source / helper).is_file():
                (run / helper).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source / helper, run / helper)
    (run / "utils").mkdir(exist_ok=True)
    (run / "utils" / "__init__.py").touch()
    for rel, text in STUBS.items():
        if not (run / rel).exists():
            (run / rel).parent.mkdir(parents=True, exist_ok=True)
            (run / rel).write_text(text)
    import transformers

    (run / "src").mkdir(exist_ok=True)
    os.symlink(Path(transformers.__file__).parent, run / "src" / "transformers")
    (run / "pytest.ini").write_text("[pytest]\naddopts = -p no:cacheprovider\n")
    (run / "conftest.py").write_text(PLUGIN)
    needed = ["tests/generation/test_utils.py", "tests/causal_lm_tester.py", *MODEL_TESTS]
    return [rel for rel in needed if not (run / rel).exists()]


def _run(mode: str, run: Path, deps: Path, keyword: str | None) -> dict[str, str]:
    report = run / f"junit-{mode}.xml"
    env = {
        **os.environ,
        "HF_SAE_STEER_POSITIONS": mode,
        "HF_SAE_STEER_WORK": str(run),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    env["PYTHONPATH"] = os.pathsep.join(
        [str(deps), str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")]
    )
    command = [
        sys.executable,
        "-m",
        "pytest",
        *MODEL_TESTS,
        "-q",
        "-W",
        "ignore",
        f"--junitxml={report}",
        "-o",
        "junit_family=xunit2",
    ]
    if keyword:
        command += ["-k", keyword]
    print(f"== positions={mode}: {' '.join(command[2:])}", flush=True)
    subprocess.run(command, cwd=run, env=env, check=False)
    outcomes: dict[str, str] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        kinds = {child.tag for child in case}
        outcomes[name] = next(
            (k for k in ("failure", "error", "skipped") if k in kinds), "passed"
        ).replace("failure", "failed")
    return outcomes


def _report(version: str, results: dict[str, dict[str, str]]) -> None:
    print(
        f"\ntransformers {version}: GenerationTesterMixin on steered GPT-2 and Llama "
        "(swap, TopK SAE, middle block)"
    )
    print(
        f"{'positions':<10} {'model':<14} {'passed':>6} {'failed':>6} {'error':>6} {'skipped':>7}"
    )
    for mode, outcomes in results.items():
        for model in sorted({name.split("::")[0] for name in outcomes}):
            counts = Counter(v for k, v in outcomes.items() if k.startswith(model + "::"))
            print(
                f"{mode:<10} {model:<14} {counts['passed']:>6} {counts['failed']:>6} "
                f"{counts['error']:>6} {counts['skipped']:>7}"
            )
    base = results.get("none")
    if base is None:
        return
    for mode, outcomes in results.items():
        if mode == "none":
            continue
        regressions = sorted(
            k for k, v in outcomes.items() if v in ("failed", "error") and base.get(k) == "passed"
        )
        print(
            f"positions={mode}: {len(regressions)} pass unsteered but fail steered"
            + "".join(f"\n  {name}" for name in regressions)
        )


if __name__ == "__main__":
    raise SystemExit(main())
