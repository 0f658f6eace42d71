"""The scoring walk: a streamed reference set, read a chunk at a time, scores as the list does."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from score_checks import REFERENCE, assert_same_scores, fit_tiny
from tiny_models import tiny_gpt2, tiny_topk_sae

from hf_sae_steer.data.prompts import hash_prompts
from hf_sae_steer.scoring.walk.passes import PromptPasses


@pytest.fixture(scope="module")
def setup(request):
    tok = request.getfixturevalue("tokenizer")
    return tiny_gpt2(len(tok)), tok, tiny_topk_sae()


def fit(setup, reference, **kw):
    return fit_tiny(setup, reference, **kw)


def write(kind: str, folder, prompts: list[str]):
    path = folder / f"reference.{kind}"
    frame = pd.DataFrame({"text": prompts, "n": range(len(prompts))})
    if kind == "txt":
        path.write_text("\n".join(prompts) + "\n")
    elif kind == "jsonl":
        path.write_text("\n".join(json.dumps({"text": p}) for p in prompts))
    elif kind == "csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path)
    return path


@pytest.mark.parametrize("summary", ["avg", "max"])
def test_streamed_files_and_datasets_score_as_the_list(setup, tmp_path, summary):
    want = fit(setup, REFERENCE, summary=summary)
    assert want.reference_hash == hash_prompts(REFERENCE) and want.reference_size == 30
    kinds = ("txt", "jsonl", "csv", "parquet")
    sources = {kind: write(kind, tmp_path, REFERENCE) for kind in kinds}
    datasets = pytest.importorskip("datasets")
    sources["datasets"] = datasets.load_dataset(
        "json", data_files=str(sources["jsonl"]), split="train", streaming=True
    )
    for kind, source in sources.items():
        # Chunks of 4 (the checkpoint interval): the walk really goes chunk by chunk.
        got = fit(setup, source, summary=summary, checkpoint=tmp_path / f"{kind}.ckpt",
                  checkpoint_every=4)  # fmt: skip
        assert_same_scores(got, want)


def test_prompts_are_read_a_chunk_at_a_time(setup, tmp_path, monkeypatch):
    drawn: list[int] = []
    seen: list[tuple[int, int]] = []  # (prompts drawn so far, prompts passed) per chunk

    def stream():
        for prompt in REFERENCE:
            drawn.append(1)
            yield prompt

    original = PromptPasses.add_reference

    def spy(self, prompts, d2, summary, sums):
        seen.append((len(drawn), len(prompts)))
        return original(self, prompts, d2, summary, sums)

    monkeypatch.setattr(PromptPasses, "add_reference", spy)
    got = fit(setup, stream(), checkpoint=tmp_path / "c.ckpt", checkpoint_every=4)
    assert [n for _, n in seen] == [4] * 7 + [2]
    # Never more than one chunk read ahead of what has been scored.
    assert all(total <= 4 * (i + 1) for i, (total, _) in enumerate(seen))
    assert_same_scores(got, fit(setup, REFERENCE))


def test_every_rule_reads_the_same_sums(setup):
    for rule in ("seed", "support", "mean_diff"):
        listed, streamed = fit(setup, REFERENCE, rule=rule), fit(setup, iter(REFERENCE), rule=rule)
        assert_same_scores(streamed, listed)
        assert streamed.recommended == listed.recommended
