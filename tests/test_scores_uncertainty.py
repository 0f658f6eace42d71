"""The uncertainty report (scores/uncertainty.py): its figures and the warnings it gives."""

from __future__ import annotations

import torch

from hf_sae_steer.scores.uncertainty import build_report

D_SAE = 100


def report_with_thin(thin: int, top: int = 10):
    """Scores whose ``top`` best latents (0..top-1) are all picked and fire on the alignment
    set; the first ``thin`` of them fire on 2 reference prompts or fewer, the rest on 40."""
    scores = torch.zeros(D_SAE)
    scores[:top] = torch.linspace(1.0, 0.1, top)
    ref_counts = torch.full((D_SAE,), 40, dtype=torch.int64)
    ref_counts[:thin] = torch.tensor([0, 1, 2] * 4)[:thin]
    align_counts = torch.full((D_SAE,), 5, dtype=torch.int64)
    return build_report(scores, 1.0, 0.1, align_counts, ref_counts, 0.9, top_k=top)


def test_three_of_the_top_ten_on_anecdote_warn():
    # The probe's case (issue 23): 3 of the top 10 fire on 2 or fewer reference prompts.
    report = report_with_thin(3)
    assert report.thin_support == 3 and report.top_k == 10
    thin = [w for w in report.warnings if "reference prompts" in w]
    assert len(thin) == 1 and thin[0].startswith("3 of the 10 highest-scoring latents")
    assert "or fewer reference prompts" in thin[0]


def test_a_few_thin_latents_among_many_do_not_warn():
    assert report_with_thin(2).warnings == []  # 2 of 10: the shipped demo's artifact
    assert report_with_thin(5, top=20).warnings == []
    assert len(report_with_thin(6, top=20).warnings) == 1


def test_an_alignment_set_of_one_distinct_text_warns():
    base = report_with_thin(0)
    assert base.warnings == []
    scores = torch.zeros(D_SAE)
    scores[:10] = torch.linspace(1.0, 0.1, 10)
    counts = torch.full((D_SAE,), 40, dtype=torch.int64)
    for distinct, given, words in [(1, 1, "1 distinct text"), (1, 5, "1 distinct text (of 5"),
                                   (3, 3, "3 distinct texts")]:  # fmt: skip
        report = build_report(scores, 1.0, 0.1, counts, counts, 0.9, top_k=10,
                              alignment_texts=(distinct, given))  # fmt: skip
        assert len(report.warnings) == 1, report.warnings
        assert f"The alignment set holds only {words}" in report.warnings[0]
    enough = build_report(scores, 1.0, 0.1, counts, counts, 0.9, top_k=10,
                          alignment_texts=(4, 4))  # fmt: skip
    assert enough.warnings == []
