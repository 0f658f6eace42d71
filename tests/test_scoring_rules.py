"""Selection rules (docs/method.md §3, §6) against plain implementations: the mean-difference
direction and its non-negative pursuit, the support-aware rule, typical activations, the
recommended steering and the report's new figures."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from test_scoring_fit import (
    ALIGNMENT,
    REFERENCE,
    N,
    letters,
    make_sae,
    plain_encode,
    site_states,
)
from transformers import GPT2Config, GPT2LMHeadModel

from hf_sae_steer import FeatureScores
from hf_sae_steer.scoring.rules.base import nn_omp, nnls


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = GPT2Config(n_layer=3, n_embd=32, n_head=4, n_positions=32, vocab_size=400,
                        bos_token_id=0, eos_token_id=0, pad_token_id=0)  # fmt: skip
    return GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="module")
def ln_sae(tmp_path_factory):
    return make_sae(tmp_path_factory.mktemp("sae"), normalize="layer_norm", seed=3)


def fit(model, tok, sae, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Norm-fraction strengths: the fluency calibration is tested in test_scoring_strength.
        return FeatureScores.fit(model, tok, sae, reference=REFERENCE, alignment=ALIGNMENT,
                                 embedder=letters, progress=False, calibrate_strength=False,
                                 **kw)  # fmt: skip


def plain_tokens(model, tok, texts, limit=None, context=32):
    """Every token's resid_post state but each window's first, one window at a time."""
    out = []
    for text in texts:
        ids = tok(text)["input_ids"][:limit]
        for start in range(0, len(ids), context):
            out += site_states(model, ids[start : start + context], "resid_post")[1:]
    return out


def layer_norm(x):
    mu = sum(x) / len(x)
    std = math.sqrt(sum((v - mu) ** 2 for v in x) / (len(x) - 1))
    return [(v - mu) / (std + 1e-5) for v in x]


def mean(rows):
    return [sum(col) / len(rows) for col in zip(*rows, strict=True)]


def plain_pursuit(rows: torch.Tensor, target: torch.Tensor, k: int):
    """Greedy non-negative pursuit with NNLS by projected gradient (not active sets)."""
    chosen, w = [], torch.zeros(0, dtype=torch.float64)
    for _ in range(k):
        residual = target - (rows[chosen].T @ w if chosen else 0.0)
        cos = [(-math.inf if i in chosen else float(rows[i] @ residual / rows[i].norm()))
               for i in range(len(rows))]  # fmt: skip
        best = max(range(len(rows)), key=lambda i: cos[i])
        if cos[best] <= 0:
            break
        chosen.append(best)
        a = rows[chosen].T
        w = torch.zeros(len(chosen), dtype=torch.float64)
        step = 1.0 / float(torch.linalg.matrix_norm(a, 2) ** 2)
        for _ in range(20000):
            w = (w - step * (a.T @ (a @ w - target))).clamp_min(0.0)
    return chosen, w


def test_mean_diff_direction_pursuit_and_report(model, tokenizer, ln_sae):
    got = fit(model, tokenizer, ln_sae, rule="mean_diff", k=4)
    ref_tokens = plain_tokens(model, tokenizer, REFERENCE)
    align_tokens = plain_tokens(model, tokenizer, ALIGNMENT, limit=256)
    delta = torch.tensor(mean([layer_norm(x) for x in align_tokens])) - torch.tensor(
        mean([layer_norm(x) for x in ref_tokens])
    )
    delta_raw = torch.tensor(mean(align_tokens)) - torch.tensor(mean(ref_tokens))
    torch.testing.assert_close(got.stats["delta"], delta, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got.stats["delta_raw"], delta_raw, atol=1e-5, rtol=1e-4)
    rows = ln_sae.W_dec.double()
    chosen, weights = plain_pursuit(rows, delta.double(), 4)
    kept = [i for i, w in zip(chosen, weights.tolist(), strict=True) if w > 1e-9]
    latents, w = got.latent_weights()
    assert latents.tolist() == kept
    torch.testing.assert_close(w.double(), weights[weights > 1e-9], atol=1e-4, rtol=1e-3)
    fitted = rows[latents].T @ w.double()
    explained = 1 - float((delta.double() - fitted).pow(2).sum() / delta.double().pow(2).sum())
    report = got.report()
    assert report.delta_explained == pytest.approx(explained, abs=1e-5)
    assert report.top_k == len(kept) and got.rule == "mean_diff"
    assert got.scores[latents].max() == 1.0 and int((got.scores > 0).sum()) == len(kept)
    # The recommended steering: add, at the strength of norm fraction 0.5 of the mean norm.
    mean_norm = sum(math.sqrt(sum(v * v for v in layer_norm(x))) for x in ref_tokens) / len(
        ref_tokens
    )
    assert got.calibration["mean_norm"] == pytest.approx(mean_norm, rel=1e-5)
    rec = got.recommended
    assert (rec["method"], rec["preserve_error"], rec["norm_fraction"]) == ("add", True, 0.5)
    assert rec["strength"] * float(fitted.norm()) == pytest.approx(0.5 * mean_norm, rel=1e-4)


def test_typical_activation_and_support_rule(model, tokenizer, ln_sae):
    seed = fit(model, tokenizer, ln_sae, rule="seed")
    support = fit(model, tokenizer, ln_sae, rule="support", prior_prompts=3.0)
    tokens = plain_tokens(model, tokenizer, REFERENCE)
    codes = [plain_encode(ln_sae, x) for x in tokens]
    typical = [
        (sum(z[f] for z in codes if z[f] > 0) / n) if (n := sum(z[f] > 0 for z in codes)) else 0.0
        for f in range(N)
    ]
    torch.testing.assert_close(seed.stats["typical_activation"], torch.tensor(typical),
                               atol=1e-5, rtol=1e-4)  # fmt: skip
    raw, counts = seed.stats["raw_scores"].double(), seed.stats["ref_fire_counts"].double()
    fired = seed.stats["mass"] > 0
    grand = float((raw * seed.stats["mass"].double()).sum() / seed.stats["mass"].double().sum())
    shrunk = torch.where(fired, (counts * raw + 3.0 * grand) / (counts + 3.0), 0.0)
    r = shrunk[fired] - shrunk[fired].min()
    want = torch.zeros(N, dtype=torch.float64)
    want[fired] = 1 - r / r.max()
    torch.testing.assert_close(support.scores.double(), want, atol=1e-5, rtol=1e-4)
    assert seed.recommended["method"] == "swap" and seed.recommended["strength"] == 1.0
    assert support.recommended["method"] == "clamp" and support.recommended["preserve_error"]
    thin = int((counts[seed.top_latents(seed.report().top_k)] <= 2).sum())
    assert seed.report().thin_support == thin


def test_rule_errors(model, tokenizer, ln_sae):
    with pytest.raises(ValueError, match="Unknown rule 'best'"):
        fit(model, tokenizer, ln_sae, rule="best")
    with pytest.raises(ValueError, match=r"k \(--k\) is an option of the rule mean_diff, not seed"):
        fit(model, tokenizer, ln_sae, rule="seed", k=3)
    with pytest.raises(ValueError, match=r"k \(--k\) must be a whole number from 1 to d_sae="):
        fit(model, tokenizer, ln_sae, rule="mean_diff", k=10_000)


def test_nnls_and_pursuit_on_known_problems():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    assert nnls(a, torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)).tolist() == pytest.approx(
        [1.0, 2.0]
    )
    # The unconstrained solution has a negative weight: NNLS clips it and refits the other.
    x = nnls(a, torch.tensor([-1.0, 2.0, 1.0], dtype=torch.float64))
    assert x[0] == 0.0 and x[1] == pytest.approx(1.5)
    rows = torch.eye(4, dtype=torch.float64)
    latents, weights, residual = nn_omp(rows, torch.tensor([3.0, -1.0, 0.5, 0.0]), 3)
    assert latents.tolist() == [0, 2] and weights.tolist() == pytest.approx([3.0, 0.5])
    assert residual.tolist() == pytest.approx([0.0, -1.0, 0.0, 0.0])


# -- degenerate inputs (issue 16): no direction, or not a finite one --------------------------
def test_mean_diff_without_a_direction_is_one_clear_error(model, tokenizer, ln_sae):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="no direction to steer towards") as caught:
            FeatureScores.fit(model, tokenizer, ln_sae, reference=REFERENCE, alignment=REFERENCE,
                              embedder=letters, progress=False)  # fmt: skip
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("rule", ["mean_diff", "seed", "support"])
def test_hidden_states_that_overflow_never_reach_scores(tokenizer, ln_sae, rule):
    torch.manual_seed(0)
    config = GPT2Config(n_layer=3, n_embd=32, n_head=4, n_positions=32, vocab_size=400,
                        bos_token_id=0, eos_token_id=0, pad_token_id=0)  # fmt: skip
    broken = GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # block 0's MLP writes +-inf into the residual stream
        broken.transformer.h[0].mlp.c_proj.weight.mul_(1e38)
    with pytest.raises(ValueError, match="not finite") as caught:
        fit(broken, tokenizer, ln_sae, rule=rule)
    assert "\n" not in str(caught.value)


def test_mean_diff_without_a_direction_on_the_command_line(tmp_path, capsys):
    from test_cli_errors import DEMO, one_line

    from hf_sae_steer.cli.main import main

    reference = tmp_path / "ref.txt"
    reference.write_text("\n".join((DEMO / "reference.txt").read_text().splitlines()[:12]))
    code = main(["score", "--model", str(DEMO / "model"), "--sae", str(DEMO / "sae"),
                 "--reference", str(reference), "--alignment", str(reference),
                 "--out", str(tmp_path / "out"), "--quiet"])  # fmt: skip
    one_line(code, capsys.readouterr()[1], "no direction to steer towards")
    assert not (tmp_path / "out").exists()
