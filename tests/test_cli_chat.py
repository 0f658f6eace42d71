"""``hf-sae-steer chat`` driven through a real terminal (a pseudo-terminal, via pexpect): the
process, readline and the keys a person would press, on the shipped demo offline."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hf_sae_steer.generation import continue_prompts
from hf_sae_steer.models import load_model
from hf_sae_steer.sae.loading import load_sae
from hf_sae_steer.scores.record import load_scores
from hf_sae_steer.steering.steered import SteeredModel

pexpect = pytest.importorskip("pexpect", reason="pexpect drives the terminal: pip install pexpect")

DEMO = Path(__file__).resolve().parents[1] / "storage" / "demo"


def demo_strength() -> str:
    """The demo artifact's recommended strength as the playground prints it."""
    from hf_sae_steer.scores.record import load_scores

    return f"{load_scores(DEMO / 'scores').recommended['strength']:.3g}"
PROMPT = "The children went"
TOKENS = 8
WAIT = 90  # seconds: a bound on every wait, never a speed claim
UP_ARROW = "\x1b[A"


def spawn(tmp_path: Path, *args: str):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1",
           "TERM": "xterm"}  # fmt: skip
    command = [
        "-m", "hf_sae_steer", "chat", "--quiet", "--max-new-tokens", str(TOKENS), *args,
    ]  # fmt: skip
    child = pexpect.spawn(
        sys.executable, command, cwd=str(tmp_path), env=env, encoding="utf-8",
        dimensions=(50, 200), timeout=WAIT,
    )  # fmt: skip
    child.logfile_read = io.StringIO()  # the whole transcript, for the checks at the end
    child.expect_exact("Type a prompt; :help for commands")
    return child, child.before  # the banner


def type_line(child, line: str) -> None:
    """Wait for the prompt (readline is then reading the terminal), then type ``line``."""
    child.expect_exact("> ")
    child.sendline(line)


def turn_line(name: str, text: str) -> str:
    """What a turn prints for one model (its time in between)."""
    return rf"{name}\s+\d+\.\d\d s\s+{re.escape(repr(text))}"


def expected_texts(prompt: str) -> tuple[str, str]:
    model, tokenizer = load_model(str(DEMO / "model"))
    base = continue_prompts(model, tokenizer, [prompt], max_new_tokens=TOKENS)[0]
    scores = load_scores(DEMO / "scores")
    with SteeredModel(model, load_sae(DEMO / "sae"), scores=scores) as steered:
        return base, continue_prompts(steered, tokenizer, [prompt], max_new_tokens=TOKENS)[0]


def expected_effect() -> str:
    """The effect in words of the steering the chat has when it is asked for it (swap: on the
    reference rule's scores, as the demo's)."""
    from hf_sae_steer.steering.effect import effect_of

    model, tokenizer = load_model(str(DEMO / "model"))
    return effect_of(
        model, tokenizer, load_sae(DEMO / "sae"), scores=load_scores(DEMO / "scores_seed"),
        method="swap", strength=0.5, preserve_error=True, positions="generated",
    ).format()  # fmt: skip


def test_chat_in_a_terminal(tmp_path):
    base, steered = expected_texts(PROMPT)
    child, banner = spawn(tmp_path)
    try:
        assert f"steering: add (the scores' recommendation) at strength {demo_strength()}" in banner
        type_line(child, PROMPT)
        child.expect(turn_line("base", base))
        child.expect(turn_line("steered", steered))
        child.expect_exact("> ")
        child.send(UP_ARROW + "\r")  # readline history: the same prompt again
        child.expect(turn_line("base", base))
        child.expect(turn_line("steered", steered))

        type_line(child, ":method swap")  # the demo's swap: on the reference rule's scores
        child.expect_exact("steering: swap on the reference rule's scores (seed) at strength 1, "
                           "preserve_error off, positions all")  # fmt: skip
        type_line(child, ":strength 0.5")
        child.expect_exact("steering: swap on the reference rule's scores (seed) at strength 0.5,")
        type_line(child, ":positions generated")
        child.expect_exact("positions generated")
        type_line(child, ":error on")
        child.expect_exact("preserve_error on")
        type_line(child, PROMPT)
        child.expect(r"steered\s+\d+\.\d\d s\s+'")

        type_line(child, ":latents 3")
        child.expect_exact("fires most on (token, activation)")
        child.expect(r"\n\s+3\s+\d+\s+\d\.\d{3}")  # the third row
        type_line(child, ":report")
        child.expect_exact("coverage")
        type_line(child, ":effect")  # what the current steering (swap at 0.5 ...) does
        child.expect_exact("(seed) at strength 0.5, preserve_error on, positions generated")
        for line in expected_effect().splitlines()[:5]:  # next token, then the lens's label
            child.expect_exact(line)
        type_line(child, ":history")
        child.expect(rf"1  {PROMPT}\s+2  {PROMPT}\s+3  {PROMPT}")

        for line, message in [
            (":strength abc", "! Strength must be a number (e.g. 2) or 'default'; got 'abc'."),
            (":method amplify", "! Unknown method 'amplify'; use one of recommended"),
            (":frobnicate", "! Unknown command :frobnicate; :help lists the commands."),
            ("", "! The prompt is empty; type some text to continue."),
            ("word " * 200, "exceeds the model's context of 128 tokens"),
        ]:
            type_line(child, line)
            child.expect_exact(message)
        type_line(child, ":settings")  # the loop is still alive after bad input
        child.expect_exact("(seed) at strength 0.5, preserve_error on")

        child.expect_exact("> ")
        child.sendeof()  # Ctrl-D
        child.expect_exact("bye")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    transcript = child.logfile_read.getvalue()
    assert "Traceback" not in transcript and "internal error" not in transcript
    assert child.exitstatus == 0, transcript[-2000:]


def test_chat_fits_your_topic_and_saves_it(tmp_path):
    import torch
    from topic_texts import FOOD, fit_on_demo, steered_on_demo

    from hf_sae_steer.cli.demo import recommended_line
    from hf_sae_steer.scores.record import FeatureScores

    base, loaded_steered = expected_texts(PROMPT)
    topic = fit_on_demo(FOOD)
    topic_steered = steered_on_demo(topic, PROMPT, TOKENS)
    assert topic_steered != loaded_steered  # else the check below could not tell them apart
    (tmp_path / "empty.txt").write_text("\n")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    (tmp_path / "reference.txt").write_text((DEMO / "reference.txt").read_text())
    os.mkfifo(tmp_path / "pipe")
    child, _ = spawn(tmp_path, "--reference", "reference.txt")  # the demo's, named on the line
    try:
        type_line(child, PROMPT)
        child.expect(turn_line("steered", loaded_steered))
        type_line(child, ":method swap")  # picked for the loaded scores: a new topic drops it
        child.expect_exact("steering: swap on")
        type_line(child, ":topic")
        child.expect_exact("Paste at least 4 example texts of your topic, one per line")
        for text in [*FOOD, ""]:
            child.expect_exact("... ")
            child.sendline(text)
        child.expect_exact("fitting your topic: 6 example texts against 150 reference prompts")
        child.expect(r"fitting\s+\d+%")  # the progress line
        child.expect_exact("fitted your topic (6 pasted texts) in")
        child.expect_exact("note: steering as your topic's scores recommend (not :method swap)")
        strength = f"{topic.recommended['strength']:.3g}"
        child.expect_exact(f"steering: add (the scores' recommendation) at strength {strength}")
        type_line(child, PROMPT)
        child.expect(turn_line("base", base))
        child.expect(turn_line("steered", topic_steered))
        child.expect_exact("> ")
        child.send(UP_ARROW * 4 + "\r")  # the pasted texts are not in the history
        child.expect(turn_line("steered", topic_steered))
        type_line(child, ":report")
        child.expect_exact(recommended_line(topic))
        type_line(child, ":save food")
        child.expect(r"saved your topic's scores to \S*/food \(")  # the resolved folder

        type_line(child, ":topic")
        for text in [*FOOD[:2], ""]:
            child.expect_exact("... ")
            child.sendline(text)
        child.expect_exact("! A topic needs at least 4 example texts, one per line; got 2.")
        type_line(child, ":topic")
        child.expect_exact("... ")
        child.sendintr()  # Ctrl-C while pasting
        child.expect_exact("! Pasting cancelled; the steering is unchanged.")
        for line, message in [
            (":topic empty.txt", "! Cannot read example texts from empty.txt: No prompts in"),
            (":topic missing.txt", "! Cannot read example texts from missing.txt: No such"),
            (":save mine", "! mine holds files the playground did not write"),
            (":save", "! :save takes a folder: :save DIR"),
            (":topic pipe", "! Cannot read example texts from pipe: pipe is not a regular file"),
            (":save empty.txt/sub", "! Cannot create"),
            (":save /dev/null", "! /dev/null is not a folder (a device, a FIFO or a socket)"),
            (":save " + "x" * 300, "File name too long"),
        ]:
            type_line(child, line)
            child.expect_exact(message)
        type_line(child, PROMPT)  # still steering with the topic after the bad input
        child.expect(turn_line("steered", topic_steered))

        type_line(child, ":topic reset")
        child.expect_exact("steering with the loaded scores again")
        type_line(child, PROMPT)
        child.expect(turn_line("steered", loaded_steered))
        type_line(child, ":save again")
        child.expect_exact("! No topic of your own yet")
        type_line(child, ":quit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    transcript = child.logfile_read.getvalue()
    assert "Traceback" not in transcript and "internal error" not in transcript
    assert child.exitstatus == 0, transcript[-2000:]
    saved = FeatureScores.from_pretrained(tmp_path / "food")
    torch.testing.assert_close(saved.scores, topic.scores)
    assert saved.recommended == topic.recommended and saved.rule == topic.rule
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    assert not (tmp_path / "again").exists()


def _fine_tuned_copy(folder: Path) -> Path:
    """The demo model after a few steps on the alignment texts: a stand-in for a fine-tuned
    model, like the one the reference demo shows."""
    import torch

    model, tokenizer = load_model(str(DEMO / "model"))
    texts = (DEMO / "alignment.txt").read_text().splitlines()[:8]
    batch = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=64)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(3):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_chat_compare_model_and_ctrl_c(tmp_path):
    tuned = _fine_tuned_copy(tmp_path / "tuned")
    child, banner = spawn(tmp_path, "--compare-model", str(tuned))
    try:
        assert "compared with tuned" in banner  # shown relative to the working directory
        type_line(child, PROMPT)
        for name in ("base", "steered", "compare"):
            child.expect(rf"{name}\s+\d+\.\d\d s\s+'")
        child.expect_exact("> ")
        child.sendintr()  # Ctrl-C at the prompt
        child.expect_exact("bye")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0 and "Traceback" not in child.logfile_read.getvalue()


def test_chat_reads_bad_input_from_a_pipe(tmp_path):
    # Not a terminal: stdin is a pipe, its bytes need not be UTF-8.
    lines = [b"caf\xe9 au lait", b":tokens 1.5", b":seed 12345678901234567890123", b":seed -1",
             b":method caf\xe9", b":seed 7", PROMPT.encode()]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(
        [sys.executable, "-m", "hf_sae_steer", "chat", "--quiet", "--max-new-tokens", "3"],
        input=b"\n".join(lines) + b"\n", capture_output=True, env=env, cwd=tmp_path,
        timeout=WAIT,
    )  # fmt: skip
    out = done.stdout.decode("utf-8", "replace")
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert "internal error" not in out and "Traceback" not in out + done.stderr.decode()
    assert out.count("is not UTF-8 text") == 2  # the prompt and the command
    assert "New tokens must be a whole number from 1 to 512; got '1.5'" in out
    assert out.count(":seed takes a whole number from 0 to 4294967295") == 2
    assert "steering:" in out and re.search(r"steered\s+\d+\.\d\d s\s+'", out)


def test_chat_swap_says_which_scores_it_steers_with(tmp_path):
    # issue 23: --reference-scores (the demo: its scores_seed) is what swap steers with.
    setup = ["--model", str(DEMO / "model"), "--sae", str(DEMO / "sae"), "--scores",
             str(DEMO / "scores")]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    said = {}
    for name, extra in [("seed", ["--reference-scores", str(DEMO / "scores_seed")]),
                        ("none", [])]:  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-m", "hf_sae_steer", "chat", "--quiet", *setup, *extra],
            input=b":method swap\n", capture_output=True, env=env, cwd=tmp_path, timeout=WAIT,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        said[name] = done.stdout.decode()
    assert "steering: swap on the reference rule's scores (seed) at strength 1," in said["seed"]
    assert "steering: swap on the loaded scores (rule output) at strength 1," in said["none"]
