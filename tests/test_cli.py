"""The command line on the shipped demo assets, in-process and as a console script."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hf_sae_steer.cli.main import main
from hf_sae_steer.scores.record import load_scores

DEMO = Path(__file__).resolve().parents[1] / "storage" / "demo"
ASSETS = f"--model {DEMO / 'model'} --sae {DEMO / 'sae'}"
STEER = f"{ASSETS} --scores {DEMO / 'scores'}"
SETS = f"--prompts {DEMO / 'prompts.txt'} --alignment {DEMO / 'alignment.txt'}"


def run(capsys, command: str, *extra: str) -> tuple[int, str, str]:
    """Run ``hf-sae-steer`` in-process; ``command`` is split on spaces (no path has any)."""
    code = main([*command.split(), *extra, "--quiet", "--seed", "0"])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, message: str) -> None:
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_generate_compare_prints_base_and_each_method(capsys):
    code, out, err = run(
        capsys,
        f"generate {STEER} --methods swap,clamp --compare --max-new-tokens 6",
        "--prompt", "The patient", "--prompt", "A river",
    )  # fmt: skip
    assert code == 0, err
    assert out.count(">>> ") == 2 and out.count("[base ]") == 2 and out.count("[clamp]") == 2


def test_generate_json_matches_the_python_api(capsys):
    prompt = "The king"
    code, out, _ = run(
        capsys,
        f"generate {STEER} --methods recommended,swap --compare --max-new-tokens 8 --json",
        "--prompt", prompt,
    )  # fmt: skip
    (row,) = json.loads(out)
    from hf_sae_steer import SteeredModel, load_sae
    from hf_sae_steer.generation import continue_prompts
    from hf_sae_steer.models import load_model
    from hf_sae_steer.scores.record import load_scores

    model, tok = load_model(str(DEMO / "model"))
    sae = load_sae(DEMO / "sae")
    base = continue_prompts(model, tok, [prompt], max_new_tokens=8)
    scores = load_scores(DEMO / "scores")
    want = {}
    for method in (None, "swap"):  # None: the artifact's recommended steering
        with SteeredModel(model, sae, scores=scores, method=method) as steered:
            texts = continue_prompts(steered, tok, [prompt], max_new_tokens=8)
            want[method or "recommended"] = texts[0]
    assert code == 0 and row["base"] == base[0]
    assert row["recommended"] == want["recommended"] and row["swap"] == want["swap"]
    assert row["recommended"] != row["base"]  # the recommended steering changes it


@pytest.mark.parametrize(
    "options, message",
    [
        (f"{ASSETS} --scores /no/such/scores", "does not exist"),
        (f"{STEER} --methods amplify", "Unknown method"),
        (f"{STEER} --layer 99", "out of range"),
        (f"{STEER}", "No prompts"),
    ],
)
def test_generate_bad_input_is_one_line_and_status_2(capsys, options, message):
    extra = () if message == "No prompts" else ("--prompt", "x")
    code, _, err = run(capsys, f"generate {options}", *extra)
    assert_one_line_error(code, err, message)


def test_score_writes_an_artifact_and_prints_the_report(capsys, tmp_path):
    reference = tmp_path / "ref.txt"
    reference.write_text("\n".join((DEMO / "reference.txt").read_text().splitlines()[:12]))
    alignment = tmp_path / "align.txt"
    alignment.write_text("\n".join((DEMO / "alignment.txt").read_text().splitlines()[:4]))
    out_dir = tmp_path / "scores"
    code, out, err = run(
        capsys, f"score {ASSETS} --reference {reference} --alignment {alignment} --out {out_dir}"
    )
    assert code == 0, err
    assert (out_dir / "scores.safetensors").is_file() and (out_dir / "README.md").is_file()
    assert "coverage" in out.lower()
    saved = load_scores(out_dir)  # the effect in words is printed, as the artifact records it
    assert saved.effect is not None and saved.effect.format(latents=0) in out
    assert "What the recommended steering does, in words:\nnext token (16 neutral" in out
    # the fit's time and the calibration's share of it, as the artifact records them
    last = out.strip().splitlines()[-1]
    assert last.startswith("Fitted in ") and "of which calibrating the strength" in last
    options = json.loads((out_dir / "steering_config.json").read_text())["options"]
    assert f"{options['calibration_seconds']:.1f} s" in last
    assert f"({options['calibration_tokens']:,} LM tokens)" in last


def test_score_bad_input(capsys, tmp_path):
    missing = tmp_path / "nope.txt"
    code, _, err = run(
        capsys, f"score {ASSETS} --reference {missing} --alignment {missing} --out {tmp_path}"
    )
    assert_one_line_error(code, err, "nope.txt")


def test_score_checkpoint_options_are_checked_before_the_model_runs(capsys, tmp_path):
    reference, alignment = DEMO / "reference.txt", DEMO / "alignment.txt"
    sets = f"--reference {reference} --alignment {alignment} --out {tmp_path / 'out'}"
    mine = tmp_path / "notes.txt"
    mine.write_text("not a checkpoint")
    code, _, err = run(capsys, f"score {ASSETS} {sets} --checkpoint {mine}")
    assert_one_line_error(code, err, "already exists: pass resume=True (--resume)")
    code, _, err = run(capsys, f"score {ASSETS} {sets} --checkpoint {mine} --resume")
    assert_one_line_error(code, err, "is not a scoring checkpoint")
    assert mine.read_text() == "not a checkpoint" and not (tmp_path / "out").exists()
    code, _, err = run(capsys, f"score {ASSETS} {sets} --checkpoint-every 10")
    assert_one_line_error(code, err, "need checkpoint=PATH (--checkpoint)")


def test_commands_that_do_not_share_work_refuse_a_launcher(capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    code, _, err = run(capsys, f"generate {STEER} --max-new-tokens 2", "--prompt", "x")
    assert_one_line_error(code, err, "generate runs in one process")
    assert err.startswith("hf-sae-steer generate [rank 1]: error:")


def test_inspect_lists_top_latents_with_examples(capsys):
    code, out, err = run(
        capsys, f"inspect {STEER} --prompts {DEMO / 'reference.txt'} --top 3 --examples 2 --json"
    )
    assert code == 0, err
    data = json.loads(out)
    assert len(data["latents"]) == 3 and "coverage" in data["report"]
    scores = [entry["score"] for entry in data["latents"]]
    assert scores == sorted(scores, reverse=True)
    fired = [ex for entry in data["latents"] for ex in entry["examples"]]
    assert fired and all(ex["activation"] > 0 and ex["token"] for ex in fired)
    assert all(len(entry["examples"]) <= 2 for entry in data["latents"])


def test_inspect_bad_input(capsys):
    code, _, err = run(
        capsys,
        f"inspect --model {DEMO / 'model'} --sae /no/such.pt --scores {DEMO / 'scores'} "
        f"--prompts {DEMO / 'reference.txt'}",
    )
    assert_one_line_error(code, err, "/no/such.pt")


def test_demo_runs_offline_on_the_shipped_assets(capsys):
    code, out, err = run(capsys, "demo --n-prompts 2 --max-new-tokens 8 --samples 1")
    assert code == 0, err
    assert "Recommended steering (rule output): add at strength" in out
    assert out.count("[recommended     ]") == 2 and out.count("[swap (reference)]") == 2
    assert "coverage" in out and "Measured on 20 prompts x 1 samples" in out
    measured = [line for line in out.splitlines() if "Δ cosine" in line]
    assert len(measured) == 2 and all("Δ P(topic)" in line for line in measured)
    assert "What the recommended steering does, in words:" in out and "  words   " in out
    assert "3 sampled continuations per prompt" in out and "repetition_penalty 1.3" in out
    shown = out.split(">>> ")[1].split("\n\n")[0].splitlines()
    assert len(shown) == 1 + 3 * 3  # the prompt, then three samples of each of three columns


def test_demo_names_the_words_it_raises_and_its_samples_show_them(capsys):
    """The shipped demo, its shown part at full size: the marked words are the effect's words,
    and the recommended steering's continuations hold more of them than the base model's."""
    code, out, err = run(capsys, "demo --samples 1")
    assert code == 0, err
    effect_words = re.search(r"\n  words   (.*)\n", out).group(1).split(", ")
    listed = re.search(r"raises most \((.*)\)\.\n", out).group(1).split(", ")
    assert len(listed) == 20 and listed[:8] == [w.rsplit(" ", 1)[0] for w in effect_words]
    assert all(float(w.rsplit(" ", 1)[1]) > 0 for w in effect_words)
    shown = out.split(">>> ", 1)[1].split("\nTopic words in")[0]
    marks = re.findall(r"\[([^\]\s]+)\]", shown)
    assert marks and all(any(m.startswith(w) for w in listed) for m in marks)
    counts = dict(re.findall(r"(base|recommended|swap \(reference\)) (\d+)", out.split(
        "Topic words in the 18 continuations shown per condition: ")[1].splitlines()[0]))
    assert int(counts["recommended"]) > int(counts["base"])


def test_demo_bad_input(capsys, tmp_path):
    code, _, err = run(capsys, f"demo --assets {tmp_path}")
    assert_one_line_error(code, err, "No demo assets")
    code, _, err = run(capsys, f"demo --model {DEMO / 'model'}")
    assert_one_line_error(code, err, "Pass all of model, sae and scores")


def test_eval_at_small_sizes(capsys, tmp_path):
    code, out, err = run(
        capsys,
        f"eval {STEER} {SETS} --methods add,swap --strengths 0.5,1 --preserve-error off "
        f"--norm-fractions 0.5 --controls random_latents --reference {DEMO / 'reference.txt'} "
        f"--samples 1 --max-new-tokens 6 --n-prompts 2 --out {tmp_path / 'eval'}",
    )
    assert code == 0, err
    for name in ("table.csv", "table.md", "plot.png"):
        assert (tmp_path / "eval" / name).is_file()
    assert "| swap | ×0.5 |" in out and "| add | ρ=0.5 |" in out and "random latents" in out


def test_eval_bad_input(capsys, tmp_path):
    code, _, err = run(capsys, f"eval {STEER} {SETS} --strengths x --out {tmp_path}")
    assert_one_line_error(code, err, "--strengths must be comma-separated numbers")


def test_console_entry_points():
    help_text = subprocess.run(
        [sys.executable, "-m", "hf_sae_steer", "--help"], capture_output=True, text=True
    ).stdout
    assert all(cmd in help_text for cmd in ("score", "generate", "inspect", "demo", "eval"))
    argv = "generate --model /no/model --sae x --scores y --prompt hi".split()
    bad = subprocess.run(
        [sys.executable, "-m", "hf_sae_steer", *argv], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_chat_and_app_help_load_neither_torch_nor_gradio():
    probe = (
        "import sys\nfrom hf_sae_steer.cli.main import main\n"
        "for command in ('chat', 'app'):\n"
        "    try:\n        main([command, '--help'])\n    except SystemExit:\n        pass\n"
        "print('torch' in sys.modules, 'gradio' in sys.modules, file=sys.stderr)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.stderr.split() == ["False", "False"], done.stderr
    assert "--compare-model" in done.stdout and "--port" in done.stdout


def test_app_without_gradio_is_one_line_and_status_2():
    probe = (
        "import sys\nsys.modules['gradio'] = None  # as if it were not installed\n"
        "from hf_sae_steer.cli.main import main\nsys.exit(main(['app']))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == (
        "hf-sae-steer app: error: The web app needs Gradio, which is not installed: "
        "pip install 'hf_sae_steer[app]'"
    )


def test_chat_and_app_bad_setup_is_one_line(capsys):
    code, _, err = run(capsys, f"chat --model {DEMO / 'model'}")
    assert_one_line_error(code, err, "Pass all of --model, --sae and --scores, or none")
    code, _, err = run(capsys, "chat --method amplify")
    assert_one_line_error(code, err, "Unknown method 'amplify'")
    code, _, err = run(capsys, f"app {STEER} --compare-model /no/such/model")
    assert_one_line_error(code, err, "/no/such/model")


def test_generate_away_matches_the_python_api(capsys):
    prompt = "The doctor said"
    code, out, err = run(
        capsys,
        f"generate {STEER} --direction away --methods recommended,vector,attenuate "
        "--max-new-tokens 8 --json",
        "--prompt", prompt,
    )  # fmt: skip
    assert code == 0, err
    (row,) = json.loads(out)
    from hf_sae_steer import SteeredModel, load_sae
    from hf_sae_steer.generation import continue_prompts
    from hf_sae_steer.models import load_model

    model, tok = load_model(str(DEMO / "model"))
    sae, scores = load_sae(DEMO / "sae"), load_scores(DEMO / "scores")
    for method in (None, "vector", "attenuate"):
        with SteeredModel(model, sae, scores=scores, method=method, direction="away") as steered:
            want = continue_prompts(steered, tok, [prompt], max_new_tokens=8)[0]
        assert row[method or "recommended"] == want
    code, _, err = run(capsys, f"generate {STEER} --direction away --methods add", "--prompt", "A")
    assert_one_line_error(code, err, "direction='away' steers with suppress, ablate, vector")
