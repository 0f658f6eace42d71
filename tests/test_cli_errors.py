"""Bad input on the command line: one line naming the problem and the fix, exit 2, before any
expensive work; our own bugs stay internal errors (exit 1); nothing the command did not write is
ever replaced."""

from __future__ import annotations

import _thread
import os
import shutil
import subprocess
import sys
import threading
import time
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
        (["--prompt", "word " * 200_000], "The prompt is 1000000 characters long"),
        (["--prompt", "hi", "--device", "cuda"], "CUDA is not available here"),
        (["--prompt", "hi", "--device", "banana"], "Unknown device 'banana'"),
        (["--prompt", "hi", "--methods", "swap", "--strength", "1e30"], "strength must be"),
        (["--prompt", "hi", "--seed", "1" * 23], "--seed must be a whole number from 0 to"),
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


# -- issue 16: output folders, checkpoints and options are checked before any work ----------

SCORE = ["score", "--model", str(DEMO / "model"), "--sae", str(DEMO / "sae"), "--reference",
         str(DEMO / "reference.txt"), "--alignment", str(DEMO / "alignment.txt")]  # fmt: skip


@pytest.fixture
def no_model(monkeypatch):
    """Records whether the command got as far as loading the model (the expensive part)."""
    calls = []
    monkeypatch.setattr(commands, "load_model", lambda *a, **k: calls.append(1) or 1 / 0)
    return calls


def unwritable(tmp_path):
    """A folder nobody here can create files in (root ignores permission bits: sysfs then)."""
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        return locked
    return Path("/sys")


def test_score_into_the_working_folder_keeps_the_users_files(capsys, tmp_path, monkeypatch):
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    mine = {f"note{i}.txt": f"mine {i}" for i in range(6)} | {"sub/nested.txt": "nested"}
    for name, text in mine.items():
        (work / name).write_text(text)
    reference = tmp_path / "ref.txt"
    reference.write_text("\n".join((DEMO / "reference.txt").read_text().splitlines()[:12]))
    monkeypatch.chdir(work)
    argv = [*SCORE[:5], "--reference", str(reference), "--alignment",
            str(DEMO / "alignment.txt"), "--out", ".", "--overwrite"]  # fmt: skip
    code, _, err = run(capsys, *argv)
    assert code == 0, err
    assert {name: (work / name).read_text() for name in mine} == mine
    assert (work / "scores.safetensors").is_file()
    code, _, err = run(capsys, *argv)  # and again, over its own artifact
    assert code == 0, err
    assert {name: (work / name).read_text() for name in mine} == mine


def test_a_checkpoint_inside_the_output_folder_is_refused_up_front(capsys, tmp_path, no_model):
    out = tmp_path / "out"
    for checkpoint in (out / "run.ckpt", out, out / "sub" / "run.ckpt"):
        code, _, err = run(capsys, *SCORE, "--out", str(out), "--checkpoint", str(checkpoint))
        one_line(code, err, "--checkpoint")
        assert "inside --out" in err
    assert no_model == []


@pytest.mark.parametrize("flag", ["--out", "--checkpoint"])
def test_unwritable_outputs_are_refused_up_front(capsys, tmp_path, no_model, flag):
    place = unwritable(tmp_path) / "hf-sae-steer-out"
    paths = {"--out": tmp_path / "out", "--checkpoint": tmp_path / "run.ckpt"} | {flag: place}
    code, _, err = run(capsys, *SCORE, "--out", str(paths["--out"]), "--checkpoint",
                       str(paths["--checkpoint"]))  # fmt: skip
    one_line(code, err, "Cannot write into")
    assert no_model == []


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--norm-fraction", "nan"], "--norm-fraction"),
        (["--norm-fraction", "inf"], "--norm-fraction"),
        (["--norm-fraction", "1e6"], "--norm-fraction"),
        (["--rule", "support", "--prior-prompts", "nan"], "--prior-prompts"),
        (["--rule", "support", "--prior-prompts", "-1"], "--prior-prompts"),
        (["--rule", "seed", "--k", "3"], "--k"),
        (["--rule", "mean_diff", "--prior-prompts", "3"], "--prior-prompts"),
        (["--target-ratio", "1e9"], "must be a perplexity ratio above 1 and below 100, got 1e"),
        (["--target-ratio", "1"], "--target-ratio"),
        (["--target-ratio", "nan"], "--target-ratio"),
        (["--no-calibrate", "--target-ratio", "3"], "calibrate_strength=False (--no-calibrate)"),
    ],
)
def test_score_options_are_checked_up_front(capsys, tmp_path, no_model, extra, message):
    code, _, err = run(capsys, *SCORE, "--out", str(tmp_path / "out"), *extra)
    one_line(code, err, message)
    assert no_model == [] and not (tmp_path / "out").exists()


def test_ctrl_c_mid_score_says_how_to_resume(capsys, tmp_path):
    reference = tmp_path / "ref.txt"
    # Enough prompts after the first checkpoint that Ctrl-C (a few milliseconds later) lands
    # mid-run, few enough that the resumed run is short.
    reference.write_text("\n".join((DEMO / "reference.txt").read_text().splitlines() * 2))
    checkpoint = tmp_path / "run.ckpt"
    argv = [*SCORE[:5], "--reference", str(reference), "--alignment", str(DEMO / "alignment.txt"),
            "--out", str(tmp_path / "out"), "--checkpoint", str(checkpoint),
            "--checkpoint-every", "16", "--batch-size", "8"]  # fmt: skip

    def interrupt_after_the_first_checkpoint():
        while not checkpoint.exists():
            time.sleep(0.005)
        _thread.interrupt_main()  # what Ctrl-C does

    watcher = threading.Thread(target=interrupt_after_the_first_checkpoint, daemon=True)
    watcher.start()
    code, _, err = run(capsys, *argv)
    watcher.join(5)
    assert code == 130
    assert str(checkpoint) in err and "--resume" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    # And the line is right: the same command with --resume finishes the run.
    code, _, err = run(capsys, *argv, "--resume")
    assert code == 0, err
