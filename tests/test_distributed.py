"""Several processes: ``torchrun --standalone --nproc-per-node 2 -m hf_sae_steer score|eval`` on
CPU (gloo) really shares the prompts and writes what one process writes."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from score_checks import assert_same_scores

from hf_sae_steer.cli.main import main
from hf_sae_steer.distributed import (
    World,
    all_gather_json,
    all_gather_tensor,
    all_reduce_sum,
    broadcast_json,
    current_world,
    process_device,
)
from hf_sae_steer.scores.record import FeatureScores
from hf_sae_steer.scoring.walk.checkpoint import read_checkpoint

DEMO = Path(__file__).resolve().parents[1] / "storage" / "demo"
ASSETS = ["--model", str(DEMO / "model"), "--sae", str(DEMO / "sae")]
TIMING = {"tokens_per_s", "train_seconds"}  # wall-clock figures: never equal between runs


def test_one_process_has_no_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    world = current_world()
    assert world == World(0, 1) and world.is_main and world.owns(5)
    tensors = {"a": torch.tensor([1.5], dtype=torch.float64)}
    all_reduce_sum(tensors, world)
    assert tensors["a"].item() == 1.5
    assert all_gather_json({"x": [1]}, world) == [{"x": [1]}] and broadcast_json(3, world) == 3
    assert len(all_gather_tensor(torch.ones(2), world)) == 1
    assert process_device(None) is None and process_device("cpu") == "cpu"
    assert [i for i in range(7) if World(1, 3).owns(i)] == [1, 4]


def torchrun(tmp_path: Path, *argv: str, name: str) -> dict[int, str]:
    """Run ``hf_sae_steer`` under torchrun with 2 CPU processes; returns each rank's stdout
    (stderr is checked to hold no error)."""
    runner = Path(sys.executable).with_name("torchrun")
    launcher = [str(runner)] if runner.exists() else [sys.executable, "-m", "torch.distributed.run"]
    logs = tmp_path / f"logs-{name}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    env.pop("WORLD_SIZE", None)
    # "--script FILE ARGS": a Python script; otherwise the command line with these arguments.
    target = argv[1:] if argv[0] == "--script" else ["-m", "hf_sae_steer", *argv, "--seed", "0"]
    done = subprocess.run(
        [*launcher, "--standalone", "--nproc-per-node", "2", "--log-dir", str(logs),
         "--redirects", "3", *target],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    out = {int(p.parent.name): p.read_text() for p in logs.rglob("stdout.log")}
    err = {int(p.parent.name): p.read_text() for p in logs.rglob("stderr.log")}
    assert done.returncode == 0, (done.stderr[-3000:], err)
    assert set(out) == {0, 1}
    assert "error" not in err[1].lower() and "traceback" not in err[1].lower()
    if argv[0] != "--script":
        assert out[1] == ""  # rank 0 speaks for the run
    return out


FIT_EVERY_WAY = """
import sys, warnings
sys.path.insert(0, sys.argv[1])
from safetensors.torch import save_file
from score_checks import ALIGNMENT, REFERENCE
from tiny_models import letters
from hf_sae_steer import FeatureScores, load_sae
from hf_sae_steer.distributed import current_world
from hf_sae_steer.models import load_model

model, tok = load_model(sys.argv[2])
sae = load_sae(sys.argv[3])
out = {}
warnings.simplefilter("ignore")
for summary in ("avg", "max", "counts"):
    for rule in ("seed", "support", "mean_diff"):
        # k=5: on a random 48-latent SAE a 10th pick can rest on rounding; the sums are the point
        got = FeatureScores.fit(model, tok, sae, reference=REFERENCE, alignment=ALIGNMENT,
                                embedder=letters, rule=rule, summary=summary, batch_size=4,
                                progress=False, k=5 if rule == "mean_diff" else None,
                                calibrate_strength=False)
        assert got.options["processes"]["reference_prompts"] == [15, 15]
        out[f"{summary}/{rule}"] = got.scores
        out[f"{summary}/{rule}/fired"] = got.stats["ref_fire_counts"]
if current_world().is_main:
    save_file(out, sys.argv[4])
print(current_world().rank, "done")
"""


def test_python_fit_under_torchrun_every_rule_and_summary(tmp_path, tokenizer):
    from safetensors.torch import load_file
    from score_checks import fit_tiny
    from tiny_models import tiny_gpt2, tiny_topk_sae

    model, sae = tiny_gpt2(len(tokenizer)), tiny_topk_sae()
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    sae.save_pretrained(tmp_path / "sae")
    script = tmp_path / "fit_every_way.py"
    script.write_text(FIT_EVERY_WAY)
    tests = str(Path(__file__).parent)
    paths = [str(tmp_path / name) for name in ("model", "sae", "two.safetensors")]
    out = torchrun(tmp_path, "--script", str(script), tests, *paths, name="fit")
    assert out == {0: "0 done\n", 1: "1 done\n"}
    two = load_file(tmp_path / "two.safetensors")
    for summary in ("avg", "max", "counts"):
        for rule in ("seed", "support", "mean_diff"):
            k = {"k": 5} if rule == "mean_diff" else {}
            one = fit_tiny((model, tokenizer, sae), rule=rule, summary=summary, **k)
            torch.testing.assert_close(two[f"{summary}/{rule}"], one.scores, atol=1e-6, rtol=0)
            assert torch.equal(two[f"{summary}/{rule}/fired"], one.stats["ref_fire_counts"])


def small_sets(tmp_path: Path) -> tuple[Path, Path]:
    reference = tmp_path / "reference.txt"
    reference.write_text("\n".join((DEMO / "reference.txt").read_text().splitlines()[:40]))
    alignment = tmp_path / "alignment.txt"
    alignment.write_text("\n".join((DEMO / "alignment.txt").read_text().splitlines()[:9]))
    return reference, alignment


def score_in_process(capsys, *argv: str) -> str:
    assert main(["score", *ASSETS, *argv, "--quiet", "--seed", "0"]) == 0
    return capsys.readouterr().out


def test_torchrun_score_shares_the_prompts_and_writes_the_same_artifact(tmp_path, capsys):
    reference, alignment = small_sets(tmp_path)
    sets = ["--reference", str(reference), "--alignment", str(alignment), "--k", "5"]
    out = torchrun(tmp_path, "score", *ASSETS, *sets, "--out", str(tmp_path / "two"),
                   "--quiet", name="score")  # fmt: skip
    printed = score_in_process(capsys, *sets, "--out", str(tmp_path / "one"))
    two = FeatureScores.from_pretrained(tmp_path / "two")
    one = FeatureScores.from_pretrained(tmp_path / "one")
    assert_same_scores(two, one)
    assert two.recommended["method"] == one.recommended["method"] == "add"
    assert two.recommended["calibrated"] and one.recommended["calibrated"]
    assert two.recommended["strength"] == pytest.approx(one.recommended["strength"], rel=1e-6)
    # The calibration: the same points measured, the same ratios (each continuation is seeded by
    # its prompt and sample, so which process ran it changes nothing).
    fluency_two, fluency_one = two.calibration.fluency, one.calibration.fluency
    assert [p["norm_fraction"] for p in fluency_two.curve] == [
        p["norm_fraction"] for p in fluency_one.curve]  # fmt: skip
    for a, b in zip(fluency_two.curve, fluency_one.curve, strict=True):
        assert a["perplexity_ratio"] == pytest.approx(b["perplexity_ratio"], rel=1e-6)
        assert a["continuations"] == b["continuations"]
    assert fluency_two.norm_fraction == pytest.approx(fluency_one.norm_fraction, rel=1e-6)
    # The suppression's calibration too: its generations and readings are shared out as well.
    away_two, away_one = two.calibration.away, one.calibration.away
    assert [p["strength"] for p in away_two.curve] == [p["strength"] for p in away_one.curve]
    for a, b in zip(away_two.curve, away_one.curve, strict=True):
        for key in ("neutral_forced_ratio", "topic_forced_ratio"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6)
    assert away_two.strength == pytest.approx(away_one.strength, rel=1e-5)
    # Each process passed its half of the prompts (prompt i went to rank i mod 2) and its share
    # of the calibration's batches: together exactly the tokens of one process.
    shared = dict(two.options["processes"])
    calibration_tokens = shared.pop("calibration_tokens")
    assert shared == {"count": 2, "reference_prompts": [20, 20], "alignment_prompts": [5, 4]}
    assert sum(calibration_tokens) == two.options["calibration_tokens"]
    assert two.options["calibration_tokens"] == one.options["calibration_tokens"]
    assert len(calibration_tokens) == 2 and min(calibration_tokens) > 0
    assert "processes" not in one.options and one.reference_size == two.reference_size == 40
    # Rank 0 prints what one process prints (the report), but for the numbers' last digits.
    assert out[0].splitlines()[1:3] == printed.splitlines()[1:3]
    assert "of which calibrating the strength" in out[0].splitlines()[-1]


def test_a_two_process_checkpoint_resumes_in_one_process(tmp_path, capsys):
    reference, alignment = small_sets(tmp_path)
    sets = ["--reference", str(reference), "--alignment", str(alignment), "--rule", "seed"]
    ckpt = tmp_path / "run.ckpt"
    # Stopped after 24 of the 40 prompts (a deterministic interruption), checkpointed by 8s.
    torchrun(tmp_path, "score", *ASSETS, *sets, "--reference-split", "[:24]", "--checkpoint",
             str(ckpt), "--checkpoint-every", "8", "--out", str(tmp_path / "part"), "--quiet",
             name="part")  # fmt: skip
    assert read_checkpoint(ckpt)[1].consumed == 24
    score_in_process(capsys, *sets, "--checkpoint", str(ckpt), "--resume",
                     "--out", str(tmp_path / "resumed"))  # fmt: skip
    score_in_process(capsys, *sets, "--out", str(tmp_path / "whole"))
    resumed = FeatureScores.from_pretrained(tmp_path / "resumed")
    assert_same_scores(resumed, FeatureScores.from_pretrained(tmp_path / "whole"))
    assert resumed.options["resumed_at"] == 24


def test_torchrun_eval_equals_one_process(tmp_path, capsys):
    argv = [
        "eval", *ASSETS, "--scores", str(DEMO / "scores"), "--prompts", str(DEMO / "prompts.txt"),
        "--alignment", str(DEMO / "alignment.txt"), "--reference", str(DEMO / "reference.txt"),
        "--methods", "add,swap", "--strengths", "1", "--preserve-error", "off",
        "--norm-fractions", "0.5", "--controls", "random_latents",
        "--baselines", "prefix,finetune", "--samples", "2", "--max-new-tokens", "5",
        "--n-prompts", "5", "--batch-size", "3", "--quiet",
    ]  # fmt: skip
    torchrun(tmp_path, *argv, "--out", str(tmp_path / "two"), name="eval")
    assert main([*argv, "--seed", "0", "--out", str(tmp_path / "one")]) == 0
    capsys.readouterr()
    for name in ("samples.jsonl", "table.csv"):
        one, two = (read_rows(tmp_path / run / name) for run in ("one", "two"))
        assert len(one) == len(two) > 0
        for a, b in zip(one, two, strict=True):
            assert untimed(a) == untimed(b)
    labels = {row["label"] for row in read_rows(tmp_path / "two" / "table.csv")}
    assert labels == {"orig", "add", "swap", "random latents", "prefix", "finetune"}


def untimed(row: dict) -> str:
    """The row without wall-clock figures, as JSON (so NaN equals NaN)."""
    return json.dumps({k: v for k, v in row.items() if k not in TIMING}, sort_keys=True)


def read_rows(path: Path) -> list[dict]:
    if path.suffix == ".csv":
        with path.open() as f:
            return list(csv.DictReader(f))
    return [json.loads(line) for line in path.read_text().splitlines()]
