"""Bad input on the command line: one line naming the problem and the fix, exit 2, before any
expensive work; our own bugs stay internal errors (exit 1); nothing the command did not write is
ever replaced."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hf_sae_steer.cli import commands
from hf_sae_steer.cli.main import main

DEMO = Path(__file__).resolve().parents[1] / "storage" / "demo"
STEER = ["--model", str(DEMO / "model"), "--sae", str(DEMO / "sae"), "--scores",
         str(DEMO / "scores")]  # fmt: skip


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([*argv, "--quiet"])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(code: int, err: str, message: str, status: int = 2) -> None:
    assert code == status, err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--prompt", ""], "--prompt number 1 is empty"),
        (["--prompt", "word " * 300], "exceeds the model's context of 128 tokens"),
        (["--prompt", "hi", "--device", "cuda"], "CUDA is not available here"),
        (["--prompt", "hi", "--device", "banana"], "Unknown device 'banana'"),
        (["--prompt", "hi", "--methods", "swap", "--strength", "1e30"], "strength must be"),
    ],
)
def test_generate_bad_input(capsys, extra, message):
    code, _, err = run(capsys, "generate", *STEER, *extra)
    one_line(code, err, message)


def test_corrupt_model_weights(capsys, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(DEMO / "model", model)
    data = (model / "model.safetensors").read_bytes()
    (model / "model.safetensors").write_bytes(data[:1000])
    code, _, err = run(capsys, "generate", "--model", str(model), "--sae", str(DEMO / "sae"),
                       "--scores", str(DEMO / "scores"), "--prompt", "hi")  # fmt: skip
    one_line(code, err, "corrupt or truncated")


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("p.txt", b"caf\xe9\n", "is not UTF-8 text"),
        ("p.json", b'["a", ', "is not valid JSON"),
        ("p.jsonl", b'"a"\n{oops\n', "is not valid JSONL"),
    ],
)
def test_unreadable_prompt_files_are_named(capsys, tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    code, _, err = run(capsys, "generate", *STEER, "--prompts", str(path))
    one_line(code, err, message)
    assert name in err


def test_eval_refuses_a_model_folder_and_leaves_it_untouched(capsys, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(DEMO / "model", model)
    before = {p.name: p.read_bytes() for p in model.iterdir()}
    code, _, err = run(capsys, "eval", *STEER, "--prompts", str(DEMO / "prompts.txt"),
                       "--alignment", str(DEMO / "alignment.txt"), "--out", str(model))  # fmt: skip
    one_line(code, err, "already holds files this command did not write")
    assert {p.name: p.read_bytes() for p in model.iterdir()} == before


def test_score_checks_its_output_before_scoring(capsys, tmp_path, monkeypatch):
    target = tmp_path / "file.txt"
    target.write_text("mine")
    calls = []
    monkeypatch.setattr(commands, "load_model", lambda *a, **k: calls.append(1))
    sets = ["--reference", str(DEMO / "reference.txt"), "--alignment", str(DEMO / "alignment.txt")]
    code, _, err = run(capsys, "score", "--model", str(DEMO / "model"), "--sae",
                       str(DEMO / "sae"), *sets, "--out", str(target))  # fmt: skip
    one_line(code, err, "is a file, not a folder")
    card = tmp_path / "card"
    card.mkdir()
    (card / "README.md").write_text("# my card")
    code, _, err = run(capsys, "score", "--model", str(DEMO / "model"), "--sae",
                       str(DEMO / "sae"), *sets, "--out", str(card))  # fmt: skip
    one_line(code, err, "README.md")
    assert calls == [] and target.read_text() == "mine"  # refused before loading the model


def test_our_own_bugs_are_internal_errors(capsys, monkeypatch):
    def broken(args):
        return {}["missing"]  # a KeyError inside the library, not the user's fault

    monkeypatch.setitem(commands.COMMANDS, "generate", broken)
    code, _, err = run(capsys, "generate", *STEER, "--prompt", "hi")
    one_line(code, err, "internal error (KeyError; --debug)", status=1)


def test_eval_without_matplotlib_names_the_extra(tmp_path):
    blocker = tmp_path / "blocker" / "matplotlib"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('not installed')\n")
    argv = ["eval", *STEER, "--prompts", str(DEMO / "prompts.txt"), "--alignment",
            str(DEMO / "alignment.txt"), "--out", str(tmp_path / "eval"), "--quiet"]  # fmt: skip
    code = (
        f"import sys; sys.path.insert(0, {str(blocker.parent)!r}); "
        f"from hf_sae_steer.cli.main import main; raise SystemExit(main({argv!r}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 2
    assert "pip install 'hf_sae_steer[eval]'" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
