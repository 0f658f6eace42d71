"""Checkpoints: an interrupted run resumed equals an uninterrupted one; a checkpoint is only
ever resumed by its own run, never overwritten, and written atomically (safetensors + JSON)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from score_checks import REFERENCE, assert_same_scores, fit_tiny
from tiny_models import tiny_gpt2, tiny_topk_sae

import hf_sae_steer.atomic as atomic
from hf_sae_steer.scoring.walk.checkpoint import (
    META_KEY,
    CheckpointError,
    read_checkpoint,
    write_checkpoint,
)


@pytest.fixture(scope="module")
def setup(request):
    tok = request.getfixturevalue("tokenizer")
    return tiny_gpt2(len(tok)), tok, tiny_topk_sae()


def fit(setup, reference=None, sae=None, **kw):
    return fit_tiny(setup, reference, sae, **kw)


def killed_after(n: int):
    """The reference stream, dying after ``n`` prompts (a crash, a pre-empted node)."""
    for i, prompt in enumerate(REFERENCE):
        if i == n:
            raise RuntimeError("killed")
        yield prompt


def interrupted(setup, path, after=11, every=4, **kw):
    with pytest.raises(RuntimeError, match="killed"):
        fit(setup, killed_after(after), checkpoint=path, checkpoint_every=every, **kw)


@pytest.mark.parametrize("summary", ["avg", "counts"])
def test_interrupted_then_resumed_equals_uninterrupted(setup, tmp_path, summary):
    path = tmp_path / "run.ckpt"
    interrupted(setup, path, summary=summary)
    _, state = read_checkpoint(path)
    assert (state.consumed, state.finished) == (8, False)  # the last checkpoint before the crash
    resumed = fit(setup, checkpoint=path, checkpoint_every=4, resume=True, summary=summary)
    want = fit(setup, summary=summary)
    assert_same_scores(resumed, want)
    assert resumed.options["resumed_at"] == 8 and "resumed_at" not in want.options
    _, state = read_checkpoint(path)
    assert (state.consumed, state.finished) == (len(REFERENCE), True)


def test_a_finished_checkpoint_rescores_with_any_rule(setup, tmp_path):
    path = tmp_path / "run.ckpt"
    fit(setup, checkpoint=path)
    calls = []
    for rule in ("seed", "support", "mean_diff"):
        # The rule only reads the sums: resuming the finished run re-scores without a pass.
        again = fit(setup, (calls.append(p) or p for p in REFERENCE), checkpoint=path,
                    resume=True, rule=rule)  # fmt: skip
        assert_same_scores(again, fit(setup, rule=rule))
        assert again.options["resumed_at"] == len(REFERENCE)
    assert len(calls) == 3 * len(REFERENCE)  # the stream is re-read (to check it), not re-scored


def test_a_checkpoint_can_grow_with_its_stream(setup, tmp_path):
    path = tmp_path / "run.ckpt"
    fit(setup, REFERENCE[:13], checkpoint=path, checkpoint_every=5)  # finished at 13 prompts
    grown = fit(setup, REFERENCE, checkpoint=path, checkpoint_every=5, resume=True)
    assert_same_scores(grown, fit(setup))


def test_resume_without_a_checkpoint_starts_afresh(setup, tmp_path):
    path = tmp_path / "deep" / "run.ckpt"
    got = fit(setup, checkpoint=path, resume=True)
    assert path.is_file() and "resumed_at" not in got.options


def test_another_run_is_refused(setup, tmp_path):
    path = tmp_path / "run.ckpt"
    interrupted(setup, path)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="its summary is 'avg', this run's is 'max'"):
        fit(setup, checkpoint=path, resume=True, summary="max")
    with pytest.raises(ValueError, match="its sae_fingerprint is"):
        fit(setup, sae=tiny_topk_sae(seed=2), checkpoint=path, resume=True)
    with pytest.raises(ValueError, match="its alignment_hash"):
        fit(setup, alignment=["Another topic."], checkpoint=path, resume=True)
    with pytest.raises(ValueError, match="first 8 reference prompts differ"):
        fit(setup, list(reversed(REFERENCE)), checkpoint=path, resume=True)
    with pytest.raises(ValueError, match="counted 8 reference prompts, but .* has only 5"):
        fit(setup, REFERENCE[:5], checkpoint=path, resume=True)
    assert path.read_bytes() == before  # a refused resume leaves the checkpoint alone


def test_nothing_is_ever_overwritten(setup, tmp_path):
    path = tmp_path / "run.ckpt"
    interrupted(setup, path)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="already exists: pass resume=True"):
        fit(setup, checkpoint=path)
    assert path.read_bytes() == before
    other = tmp_path / "notes.txt"
    other.write_text("mine")
    with pytest.raises(ValueError, match="not a scoring checkpoint"):
        fit(setup, checkpoint=other, resume=True)
    with pytest.raises(ValueError, match="already exists"):
        fit(setup, checkpoint=other)
    assert other.read_text() == "mine"
    with pytest.raises(ValueError, match="is a folder"):
        fit(setup, checkpoint=tmp_path, resume=True)


def test_the_file_is_safetensors_with_json_state(setup, tmp_path):
    path = tmp_path / "run.ckpt"
    interrupted(setup, path)
    with safe_open(str(path), framework="pt") as f:
        state = json.loads(f.metadata()[META_KEY])
        dtypes = {f.get_tensor(name).dtype for name in f.keys()}  # noqa: SIM118
    assert state["format"] == "hf_sae_steer/scoring_checkpoint" and state["consumed"] == 8
    assert state["run"]["summary"] == "avg" and state["run"]["alignment_size"] == 2
    assert "rule" not in state["run"]  # the rule reads the sums; it may change on resume
    assert dtypes == {torch.float64, torch.int64}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.ckpt"]  # no temporary left


def test_a_failed_write_keeps_the_last_checkpoint(setup, tmp_path, monkeypatch):
    path = tmp_path / "run.ckpt"
    interrupted(setup, path)
    before = path.read_bytes()

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", full_disk)
    with pytest.raises(OSError, match="No space left"):
        fit(setup, checkpoint=path, checkpoint_every=4, resume=True)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.ckpt"]


def test_bad_options(setup, tmp_path):
    with pytest.raises(ValueError, match="need checkpoint=PATH"):
        fit(setup, checkpoint_every=4)
    with pytest.raises(ValueError, match="need checkpoint=PATH"):
        fit(setup, resume=True)
    with pytest.raises(ValueError, match="positive number"):
        fit(setup, checkpoint=tmp_path / "c", checkpoint_every=0)


# -- corrupted, crafted and foreign checkpoints (issue 16) -----------------------------------
def tensor_span(path, name: str) -> tuple[int, int]:
    """Where tensor ``name``'s bytes lie in the safetensors file at ``path``."""
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    start, stop = json.loads(data[8 : 8 + size])[name]["data_offsets"]
    return 8 + size + start, 8 + size + stop


def crafted(path, **changes) -> None:
    """Rewrite the checkpoint at ``path`` through the library's own writer (a valid checksum)
    with some sums changed: ``name=tensor`` replaces, ``name=None`` drops."""
    tensors, state = read_checkpoint(path)
    for name, value in changes.items():
        if value is None:
            del tensors[name]
        else:
            tensors[name] = value(tensors[name]) if callable(value) else value
    path.unlink()
    write_checkpoint(path, tensors, state)


def refused(setup, path, message):
    """Resuming from ``path`` is one CheckpointError naming the file; the file is kept."""
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match=message) as caught:
        fit(setup, checkpoint=path, checkpoint_every=4, resume=True)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    assert path.read_bytes() == before


def test_one_flipped_bit_is_refused(setup, tmp_path):
    path = tmp_path / "run.ckpt"
    interrupted(setup, path)
    start, stop = tensor_span(path, "num")
    data = bytearray(path.read_bytes())
    data[(start + stop) // 2] ^= 0x01  # one low bit of one sum: no sanity check could see it
    path.write_bytes(bytes(data))
    refused(setup, path, "checksum")


def test_a_torn_file_is_refused(setup, tmp_path):
    path = tmp_path / "run.ckpt"
    interrupted(setup, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    refused(setup, path, "corrupt|not a scoring checkpoint")


def nan_first(t):
    t = t.clone()
    t[0] = float("nan")
    return t


def minus_one(t):
    t = t.clone()
    t[0] = -1
    return t


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"num": nan_first}, "sum 'num' is not finite"),
        ({"den": lambda t: t.clone().fill_(float("inf"))}, "sum 'den' is not finite"),
        ({"ref_prompts": minus_one}, "sum 'ref_prompts' is negative"),
        ({"den": minus_one}, "sum 'den' is negative"),
        ({"den": lambda t: t.float()}, "sum 'den' is float32, not float64"),
        ({"act_tokens": lambda t: t[:-1]}, r"sum 'act_tokens' has shape \(47,\), not \(48,\)"),
        ({"num": None}, "lacks the sum 'num'"),
        ({"extra": torch.zeros(3)}, "unknown tensor 'extra'"),
        ({"ref_n": lambda t: t + 1}, "counts 9 reference prompts in its sums but 8 in its state"),
        ({"ref_prompts": lambda t: t + 100}, "more reference or alignment prompts than"),
        ({"ref_prompts": lambda t: t * 0}, "fire without prompts"),
    ],
)
def test_crafted_sums_are_refused(setup, tmp_path, changes, message):
    path = tmp_path / "run.ckpt"
    interrupted(setup, path)
    crafted(path, **changes)
    refused(setup, path, message)


def test_nan_sums_never_reach_scores_on_the_command_line(tmp_path, capsys):
    from test_cli_errors import DEMO, one_line

    from hf_sae_steer.cli.main import main

    path = tmp_path / "run.ckpt"
    reference = tmp_path / "ref.txt"
    reference.write_text("\n".join((DEMO / "reference.txt").read_text().splitlines()[:12]))
    sets = ["--model", str(DEMO / "model"), "--sae", str(DEMO / "sae"), "--reference",
            str(reference), "--alignment", str(DEMO / "alignment.txt"), "--checkpoint",
            str(path), "--quiet"]  # fmt: skip
    assert main(["score", *sets, "--out", str(tmp_path / "a")]) == 0
    crafted(path, num=nan_first)
    capsys.readouterr()
    code = main(["score", *sets, "--resume", "--out", str(tmp_path / "b")])
    _, err = capsys.readouterr()
    one_line(code, err, f"Checkpoint {path} is corrupt: its sum 'num' is not finite")
    assert not (tmp_path / "b").exists()
    path.write_bytes(path.read_bytes()[:100])
    code = main(["score", *sets, "--resume", "--out", str(tmp_path / "b")])
    one_line(code, capsys.readouterr()[1], str(path))


def test_stale_temporaries_are_cleaned_and_only_ours(setup, tmp_path):
    path = tmp_path / "run.ckpt"
    stale = tmp_path / ".run.ckpt.k2x_9abc.tmp"  # what kill -9 mid-write leaves: 0 bytes
    stale.write_bytes(b"")
    mine = [tmp_path / ".run.ckpt.notes.tmp", tmp_path / ".other.ckpt.k2x_9abc.tmp"]
    for other in mine:
        other.write_text("not ours")
    fit(setup, checkpoint=path, checkpoint_every=4)
    assert not stale.exists() and all(other.read_text() == "not ours" for other in mine)


# -- the run identity: the model's weights, not its path --------------------------------------
def saved_model(folder, model):
    from transformers import AutoModelForCausalLM

    model.save_pretrained(folder)
    return AutoModelForCausalLM.from_pretrained(folder).eval()


def test_other_weights_at_the_same_path_are_refused(setup, tmp_path):
    model, tok, sae = setup
    first = saved_model(tmp_path / "m", model)
    path = tmp_path / "run.ckpt"
    interrupted((first, tok, sae), path)
    changed = saved_model(tmp_path / "m", tiny_gpt2(len(tok), seed=5))  # same path, new weights
    with pytest.raises(CheckpointError, match="its model_fingerprint is"):
        fit((changed, tok, sae), checkpoint=path, resume=True)
    with pytest.raises(CheckpointError, match="its model_dtype is 'torch.float32', this run's is "
                       "'torch.float64'"):  # fmt: skip
        fit((saved_model(tmp_path / "m", model).double(), tok, sae), checkpoint=path, resume=True)
    moved = saved_model(tmp_path / "elsewhere", model)  # the same weights at another path
    resumed = fit((moved, tok, sae), checkpoint=path, checkpoint_every=4, resume=True)
    assert resumed.options["resumed_at"] == 8
    assert_same_scores(resumed, fit(setup))


# -- one run per checkpoint at a time ---------------------------------------------------------
def test_a_second_run_on_the_same_checkpoint_is_refused(setup, tmp_path):
    import threading

    path = tmp_path / "run.ckpt"
    started, release = threading.Event(), threading.Event()

    def held_stream():
        for i, prompt in enumerate(REFERENCE):
            if i == 6:
                started.set()
                release.wait(60)
            yield prompt

    results = {}

    def first_run():
        results["first"] = fit(setup, held_stream(), checkpoint=path, checkpoint_every=4)

    worker = threading.Thread(target=first_run)
    worker.start()
    try:
        assert started.wait(60)
        for resume in (False, True):  # refused before reading or writing anything
            with pytest.raises(CheckpointError, match="in use by another run"):
                fit(setup, checkpoint=path, checkpoint_every=4, resume=resume)
    finally:
        release.set()
        worker.join(60)
    assert_same_scores(results["first"], fit(setup))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.ckpt"]  # the lock is gone
    again = fit(setup, checkpoint=path, resume=True)  # the lock was released
    assert again.options["resumed_at"] == len(REFERENCE)


def test_a_format_1_checkpoint_is_refused_with_what_to_do(setup, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "run.ckpt"
    interrupted(setup, path)
    tensors, state = read_checkpoint(path)
    old = {**state.to_json(), "format_version": 1}  # 0.2 wrote no checksum, no weights' hash
    path.unlink()
    save_file(tensors, str(path), {META_KEY: json.dumps(old)})
    refused(setup, path, "format 1; this hf_sae_steer reads format 2 only. Finish it with")
