"""The README and docs/ say what is true: the README's quickstart runs as written and prints what
the README shows, docs/cli.md names every command and flag the parser has, every relative link
leads to a file (and heading) that exists, and the benchmark table's markers are in place."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hf_sae_steer.cli.main import build_parser
from hf_sae_steer.evaluation.benchmark_md import README_END, README_START

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
QUICKSTART = "<!-- quickstart: tests/test_docs.py runs this block"
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _blocks_after(text: str, marker: str) -> list[str]:
    """The fenced blocks after ``marker``, in order."""
    start = text.index(marker)
    return FENCE.findall(text, start)


def _first_words(lines: list[str]) -> list[str]:
    return [line.split()[0] for line in lines if line.strip()]


def test_readme_quickstart_runs_and_prints_what_the_readme_shows():
    text = README.read_text()
    code, shown = _blocks_after(text, QUICKSTART)[:2]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    # timeout: a bound on a hang, never a speed claim
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    printed = done.stdout.splitlines()
    # Values move with the machine (the calibration samples); what each line says must not.
    assert _first_words(printed) == _first_words(shown.splitlines()), done.stdout
    assert printed[0].startswith(("add at strength", "vector at strength")), printed[0]
    assert printed[-1].startswith("steered: '") and printed[-2].startswith("base:    '")


def _flags() -> dict[str, list[str]]:
    parser = build_parser()
    (commands,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    return {
        name: [
            flag
            for action in sub._actions
            for flag in action.option_strings
            if flag.startswith("--") and flag != "--help"
        ]  # fmt: skip
        for name, sub in commands.choices.items()
    }


def test_cli_md_names_every_command_and_flag():
    text = (ROOT / "docs" / "cli.md").read_text()
    missing = []
    for command, flags in _flags().items():
        if not re.search(rf"^## .*\b{command}\b", text, re.M):
            missing.append(f"a section for {command}")
        missing += [f"{command} {flag}" for flag in flags
                    if not re.search(rf"`{re.escape(flag)}(?![\w-])", text)]  # fmt: skip
    assert not missing, f"docs/cli.md lacks: {', '.join(missing)}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    words = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return words.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text())
    return {_slug(m) for m in re.findall(r"^#+ (.*)$", text, re.M)}


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: p.name)
def test_relative_links_lead_somewhere(page):
    broken = []
    for target in LINK.findall(FENCE.sub("", page.read_text())):
        if re.match(r"[a-z]+:", target):
            continue  # a web address
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        if not path.exists():
            broken.append(target)
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(target)
    assert not broken, f"{page.name}: links to nothing: {', '.join(broken)}"


def test_readme_keeps_the_benchmark_table_markers():
    text = README.read_text()
    assert text.count(README_START) == 1 and text.count(README_END) == 1
    assert text.index(README_START) < text.index(README_END)
