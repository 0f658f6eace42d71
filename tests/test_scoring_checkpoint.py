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
from hf_sae_steer.scoring.checkpoint import META_KEY, read_checkpoint


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
