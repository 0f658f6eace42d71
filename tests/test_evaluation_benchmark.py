"""The multi-topic benchmark end to end on a tiny model, both directions: topics from files, a
cross-source judge, every condition, matched comparisons, the away analysis, the saved runs, the
report and the README's table."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from tiny_models import letters, tiny_gpt2, tiny_topk_sae, varied_prompts

from hf_sae_steer.evaluation.away import (
    ABLATION,
    ATTENUATE,
    ATTENUATE_STRENGTHS,
    BUDGETS,
    CAA_SUBTRACTION,
    DEFAULT_SUPPRESSION,
    SUPPRESS,
    inviting_prompts,
    run_away_topic,
    save_away,
    within_budget,
)
from hf_sae_steer.evaluation.benchmark import CAA, Candidate, calibrated_label, judged, run_topic
from hf_sae_steer.evaluation.benchmark_md import (
    README_END,
    README_START,
    load_runs,
    save_run,
    update_readme,
    write_report,
)
from hf_sae_steer.evaluation.judges import JudgeTexts, build_judge
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


def tiny_judge(topic):
    """A judge from other texts than the topic's (sentences about the same words, reworded)."""
    positives = [f"{t} It is about {w}." for t in topic.fit for w in ("this", "that", "it")]
    negatives = [f"{t} Nothing else." for t in varied_prompts(24, seed=9)]
    texts = JudgeTexts(topic.name, positives[::2], negatives[::2], positives[1::2],
                       negatives[1::2])  # fmt: skip
    return build_judge(letters, texts, transfer=(topic.eval, topic.negatives)), texts


def test_both_directions_run_judged_and_the_report_is_written(topics_dir, tokenizer, tmp_path):
    model, sae = tiny_gpt2(len(tokenizer)), tiny_topk_sae()
    weights = [p.detach().clone() for p in model.parameters()]
    topic = load_topics(topics_dir, "heldout")[0]
    judge, texts = tiny_judge(topic)
    candidates = (Candidate("md", "mean_diff", (("k", 3),)), Candidate("out", "output"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = run_topic(
            model, tokenizer, sae, topic, varied_prompts(12), ["The farmer", "A bridge"],
            candidates, default="md", grid=(0.5, 1.0), samples=1, max_new_tokens=6,
            embedder=letters, n_boot=50, calibrate=False, judge=judge, judge_texts=texts,
            reference_point=("md", 0.5),
        )  # fmt: skip
    labels = {r["label"] for r in run.result.rows}
    assert labels == {"orig", "md", "out", calibrated_label("md"), calibrated_label("out"), CAA,
                      "random vector"}  # fmt: skip
    # every P(topic) is the judge's: recomputed from the continuations, it agrees
    samples = run.result.samples
    p = judge.probability([r["continuation"] for r in samples])
    assert [r["p_topic"] for r in samples] == pytest.approx(p.tolist())
    point = next(r for r in run.result.rows if r["label"] == calibrated_label("md"))
    assert point["strength"] == pytest.approx(run.fits["md"]["recommended"]["strength"])
    assert all(r.get("diff") is not None for r in run.matched if r["label"] != CAA)
    assert run.fits["judge"]["transfer_auc"] is not None
    assert {r["label"] for r in run.fits["reference_point"]} == labels - {"orig", "md"}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        away = run_away_topic(
            model, tokenizer, sae, topic, run.artifacts, "md", ["The farmer", "A bridge"],
            measure=judged(judge, texts, topic), n_inviting=3, k=3, samples=1,
            max_new_tokens=6, embedder=letters, n_boot=50,
        )  # fmt: skip
    assert away.inviting == inviting_prompts(topic.eval, 3)
    k = len(run.artifacts["md"].topic_latents()[0])
    want = {CAA_SUBTRACTION, ABLATION, SUPPRESS, f"random {k} latents", ATTENUATE,
            DEFAULT_SUPPRESSION}  # fmt: skip
    assert {r["label"] for r in away.analysis["points"]} == want
    assert len(away.analysis["budgets"]) == 6 * len(BUDGETS) * 2  # conditions x budgets x measures
    gate = next(r for r in away.analysis["points"] if r["label"] == ATTENUATE)
    assert gate["point"] in ATTENUATE_STRENGTHS
    default = [r for r in away.analysis["points"] if r["label"] == DEFAULT_SUPPRESSION]
    assert [r["point"] for r in default] == [run.artifacts["md"].recommended_away.strength]
    clamp = next(r for r in away.analysis["budgets"] if r["label"] == SUPPRESS)
    assert {"vs " + CAA_SUBTRACTION, "vs " + ABLATION} <= set(clamp)
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters(), strict=True))

    save_run(run, tmp_path / "runs", seconds=1.0)
    save_away(away, tmp_path / "runs", seconds=1.0)
    runs = load_runs(tmp_path / "runs", ["river", "missing"])
    away_runs = load_runs(tmp_path / "runs", ["river.away"])
    assert [r["topic"] for r in runs] == ["river"] and len(away_runs) == 1
    path = write_report(runs, tmp_path / "out", command="x", seconds=1.0, threads=1, samples=1,
                        away=away_runs)  # fmt: skip
    text = path.read_text()
    assert "### Toward, held-out topics" in text and "| river |" in text
    assert "# Away: suppressing a topic" in text and "CAA subtraction" in text
    assert "The default suppression lowers P(topic)" in text
    assert "`attenuate (library)`" in text
    assert json.loads((tmp_path / "out" / "benchmark.json").read_text())["away_topics"] == ["river"]
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_START}\nold\n{README_END}\nrest\n")
    assert update_readme(readme, runs, "x", away=away_runs)
    new = readme.read_text()
    assert "old" not in new and "| mean_diff k=10 |" in new and new.endswith("rest\n")
    assert f"| {SUPPRESS} |" in new
    (tmp_path / "plain.md").write_text("no markers")
    assert not update_readme(tmp_path / "plain.md", runs, "x")


def test_openings_are_a_few_words_of_each_text():
    texts = ["Arnica is used especially in treating bruises.", "Arnica is used again, twice",
             "Short."]  # fmt: skip
    out = inviting_prompts(texts, words=(4, 4))
    assert out == ["Arnica is used especially", "Arnica is used again", "Short."]
    assert inviting_prompts(texts, 1) == inviting_prompts(texts)[:1]


def plain_within(gains, ratios, budget):
    """The gain where the (running maximum of the) ratio first reaches ``budget``, linear in log
    ratio from (1, 0); the last gain when it never does."""
    prev_r, prev_g, top = 1.0, 0.0, 1.0
    for g, r in zip(gains, ratios, strict=True):
        top = max(top, r)
        if top >= budget:
            t = (math.log(budget) - math.log(prev_r)) / (math.log(top) - math.log(prev_r))
            return prev_g + t * (g - prev_g)
        prev_r, prev_g = top, g
    return gains[-1]


@pytest.mark.parametrize("ratios", [(1.02, 1.08, 1.2), (1.01, 1.03, 1.04), (1.2, 1.1, 1.3),
                                    (1.0, 1.06, 1.05)])  # fmt: skip
def test_within_budget_against_a_plain_reading(ratios):
    gains = (-0.1, -0.2, -0.4)
    got = within_budget(np.array([gains]), np.log(np.array([ratios])), 1.05)[0]
    assert got == pytest.approx(plain_within(gains, ratios, 1.05))
