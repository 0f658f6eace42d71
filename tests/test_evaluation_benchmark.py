"""The multi-topic benchmark end to end on a tiny model: topics from files, every condition,
matched comparisons, the saved runs, the report and the README's table."""

from __future__ import annotations

import json
import warnings

import pytest
from tiny_models import letters, tiny_gpt2, tiny_topk_sae, varied_prompts

from hf_sae_steer.evaluation.benchmark import CAA, Candidate, calibrated_label, run_topic
from hf_sae_steer.evaluation.benchmark_md import (
    README_END,
    README_START,
    load_runs,
    save_run,
    update_readme,
    write_report,
)
from hf_sae_steer.evaluation.topics import load_topics

MEDICINE = ["The patient had a fever.", "A doctor treated the cough.",
            "Symptoms of the infection include pain.", "The heart and lungs were examined."]
RIVER = ["The river flows to the sea.", "A bridge crossed the river.",
         "The valley held a wide river.", "Boats sailed down the river."]
TOPICS = {
    "medicine": ("tuning", "noun.medicine", MEDICINE),
    "river": ("heldout", "noun.river", RIVER),
}  # fmt: skip


@pytest.fixture
def topics_dir(tmp_path):
    root = tmp_path / "topics"
    listed, negatives = [], []
    for name, (split, source, texts) in TOPICS.items():
        (root / name).mkdir(parents=True)
        (root / name / "fit.txt").write_text("\n".join(texts) + "\n")
        (root / name / "eval.txt").write_text("\n".join(t.replace("The", "A") for t in texts))
        listed.append({"name": name, "source": source, "split": split})
        negatives += [{"text": t, "source": source, "medical": False} for t in texts]
    negatives += [{"text": t, "source": "noun.other", "medical": False}
                  for t in varied_prompts(8, seed=3)]  # fmt: skip
    (root / "topics.json").write_text(json.dumps({"topics": listed}))
    (root / "negatives.jsonl").write_text("\n".join(json.dumps(n) for n in negatives) + "\n")
    return root


def test_topics_keep_their_own_texts_out_of_their_negatives(topics_dir):
    topics = load_topics(topics_dir)
    assert [t.name for t in topics] == ["medicine", "river"]
    medicine = topics[0]
    assert medicine.split == "tuning" and len(medicine.fit) == 4
    assert not set(medicine.fit) & set(medicine.negatives)
    assert set(TOPICS["river"][2]) <= set(medicine.negatives)
    assert [t.name for t in load_topics(topics_dir, "heldout")] == ["river"]


def test_a_topic_runs_every_condition_and_the_report_is_written(topics_dir, tokenizer, tmp_path):
    model, sae = tiny_gpt2(len(tokenizer)), tiny_topk_sae()
    topic = load_topics(topics_dir, "heldout")[0]
    candidates = (Candidate("md", "mean_diff", (("k", 3),)), Candidate("out", "output"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = run_topic(
            model, tokenizer, sae, topic, varied_prompts(12), ["The farmer", "A bridge"],
            candidates, default="md", grid=(0.5, 1.0), samples=1, max_new_tokens=6,
            embedder=letters, n_boot=50,
            fit_options={"calibration_prompts": ["The river", "A farmer"]},
        )  # fmt: skip
    labels = {r["label"] for r in run.result.rows}
    assert {"orig", "md", "out", calibrated_label("md"), CAA, "random latents", "random vector",
            "support clamp", "seed swap", "prefix", "finetune"} <= labels  # fmt: skip
    # each candidate's calibrated point sits at the strength its fit recommends
    point = next(r for r in run.result.rows if r["label"] == calibrated_label("md"))
    assert point["strength"] == pytest.approx(run.fits["md"]["recommended"]["strength"])
    assert {r["label"] for r in run.matched} >= {"md", "out", CAA}
    assert all(r.get("diff") is not None for r in run.matched if r["label"] != CAA)
    assert run.fits["md"]["latents"] <= 3 and run.fits["md"]["latents_90"] <= 3

    save_run(run, tmp_path / "runs", seconds=1.0)
    runs = load_runs(tmp_path / "runs", ["river", "missing"])
    assert [r["topic"] for r in runs] == ["river"]
    path = write_report(runs, tmp_path / "out", command="x", seconds=1.0, threads=1, samples=1)
    text = path.read_text()
    assert "## Held-out topics" in text and "| river |" in text and "CAA" in text
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_START}\nold\n{README_END}\nrest\n")
    assert update_readme(readme, runs, "x")
    new = readme.read_text()
    assert "old" not in new and "| mean_diff k=10 |" in new and new.endswith("rest\n")
    (tmp_path / "plain.md").write_text("no markers")
    assert not update_readme(tmp_path / "plain.md", runs, "x")
