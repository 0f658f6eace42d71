"""The command line on the shipped demo assets, in-process and as a console script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hf_sae_steer.cli import main

DEMO = Path(__file__).resolve().parents[1] / "storage" / "demo"
MODEL, SAE, SCORES = str(DEMO / "model"), str(DEMO / "sae"), str(DEMO / "scores")
COMMON = ["--quiet", "--seed", "0"]


def run(capsys, *argv):
    code = main([*argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_compare_prints_base_and_each_method(capsys):
    code, out, err = run(
        capsys, "generate", "--model", MODEL, "--sae", SAE, "--scores", SCORES,
        "--prompt", "The patient", "--prompt", "A river", "--methods", "swap,clamp",
        "--compare", "--max-new-tokens", "6", *COMMON,
    )
    assert code == 0, err
    assert out.count(">>> ") == 2 and out.count("[base ]") == 2 and out.count("[clamp]") == 2


def test_generate_json_matches_the_python_api(capsys):
    code, out, _ = run(
        capsys, "generate", "--model", MODEL, "--sae", SAE, "--scores", SCORES,
        "--prompt", "The patient", "--max-new-tokens", "5", "--json", *COMMON,
    )
    rows = json.loads(out)
    from hf_sae_steer import SteeredModel, load_sae
    from hf_sae_steer.recipes import continue_prompts, load_model, load_scores

    model, tok = load_model(MODEL)
    with SteeredModel(model, load_sae(SAE), scores=load_scores(SCORES)) as steered:
        want = continue_prompts(steered, tok, ["The patient"], max_new_tokens=5)
    assert code == 0 and rows[0]["swap"] == want[0]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--scores", "/no/such/scores"], "does not exist"),
        (["--scores", SCORES, "--methods", "amplify"], "Unknown method"),
        (["--scores", SCORES, "--layer", "99"], "out of range"),
    ],
)
def test_generate_bad_input_is_one_line_and_status_2(capsys, argv, message):
    code, out, err = run(
        capsys, "generate", "--model", MODEL, "--sae", SAE, "--prompt", "x", *argv, *COMMON
    )
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_score_writes_an_artifact_and_prints_the_report(capsys, tmp_path):
    reference = tmp_path / "ref.txt"
    reference.write_text("\n".join((DEMO / "reference.txt").read_text().splitlines()[:12]))
    alignment = tmp_path / "align.txt"
    alignment.write_text("\n".join((DEMO / "alignment.txt").read_text().splitlines()[:4]))
    code, out, err = run(
        capsys, "score", "--model", MODEL, "--sae", SAE, "--reference", str(reference),
        "--alignment", str(alignment), "--out", str(tmp_path / "scores"), *COMMON,
    )
    assert code == 0, err
    assert (tmp_path / "scores" / "scores.safetensors").is_file()
    assert "coverage" in out.lower()


def test_score_bad_input(capsys, tmp_path):
    code, _, err = run(
        capsys, "score", "--model", MODEL, "--sae", SAE, "--reference", str(tmp_path / "nope.txt"),
        "--alignment", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "o"), *COMMON,
    )
    assert code == 2 and "nope.txt" in err


def test_inspect_lists_top_latents_with_examples(capsys):
    code, out, err = run(
        capsys, "inspect", "--model", MODEL, "--sae", SAE, "--scores", SCORES,
        "--prompts", str(DEMO / "reference.txt"), "--top", "3", "--examples", "2", "--json",
        *COMMON,
    )
    assert code == 0, err
    data = json.loads(out)
    assert len(data["latents"]) == 3 and "coverage" in data["report"]
    scores = [entry["score"] for entry in data["latents"]]
    assert scores == sorted(scores, reverse=True)
    fired = [ex for entry in data["latents"] for ex in entry["examples"]]
    assert all(ex["activation"] > 0 for ex in fired)


def test_inspect_bad_input(capsys):
    code, _, err = run(
        capsys, "inspect", "--model", MODEL, "--sae", "/no/such.pt", "--scores", SCORES,
        "--prompts", str(DEMO / "reference.txt"), *COMMON,
    )
    assert code == 2 and "/no/such.pt" in err


def test_demo_runs_offline_on_the_shipped_assets(capsys):
    code, out, err = run(capsys, "demo", "--n-prompts", "2", "--max-new-tokens", "8", *COMMON)
    assert code == 0, err
    assert out.count("[swap ]") == 2 and "Similarity of continuations" in out


def test_demo_bad_input(capsys, tmp_path):
    code, _, err = run(capsys, "demo", "--assets", str(tmp_path), *COMMON)
    assert code == 2 and "No demo assets" in err
    code, _, err = run(capsys, "demo", "--model", MODEL, *COMMON)
    assert code == 2 and "Pass all of model, sae and scores" in err


def test_eval_at_small_sizes(capsys, tmp_path):
    code, out, err = run(
        capsys, "eval", "--model", MODEL, "--sae", SAE, "--scores", SCORES,
        "--prompts", str(DEMO / "prompts.txt"), "--alignment", str(DEMO / "alignment.txt"),
        "--methods", "orig,swap", "--strengths", "0.5,1", "--preserve-error", "off",
        "--samples", "1", "--max-new-tokens", "6", "--n-prompts", "2",
        "--out", str(tmp_path / "eval"), *COMMON,
    )
    assert code == 0, err
    assert (tmp_path / "eval" / "table.csv").is_file()


def test_eval_bad_input(capsys, tmp_path):
    code, _, err = run(
        capsys, "eval", "--model", MODEL, "--sae", SAE, "--scores", SCORES,
        "--prompts", str(DEMO / "prompts.txt"), "--alignment", str(DEMO / "alignment.txt"),
        "--strengths", "x", "--out", str(tmp_path), *COMMON,
    )
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_console_entry_points():
    out = subprocess.run(
        [sys.executable, "-m", "hf_sae_steer", "--help"], capture_output=True, text=True,
        check=True,
    ).stdout
    assert all(cmd in out for cmd in ("score", "generate", "inspect", "demo", "eval"))
    bad = subprocess.run(
        [sys.executable, "-m", "hf_sae_steer", "generate", "--model", "/no/model", "--sae", "x",
         "--scores", "y", "--prompt", "hi"], capture_output=True, text=True,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
