"""Steering away from a topic through SteeredModel (``docs/method.md`` §9): the artifact's
recommended suppression, CAA subtraction and directional ablation, each against the plain
per-token implementation in method_reference; the fit's topic latents and calibration; the
artifact round trip."""

from __future__ import annotations

import math
import re

import pytest
import torch
from method_reference import steer_sequence
from test_steering_recommended import IDS, LAYER, OTHERS, TEXTS, fit_openai_sae, reference_logits

from hf_sae_steer import FeatureScores, SteeredModel, load_scores
from hf_sae_steer.scores.recommendation import AwayCalibration
from hf_sae_steer.scoring.away import forced_perplexity, strength_at, topic_passages
from hf_sae_steer.sites.hooks import steering_hooks


@pytest.fixture
def fitted(gpt2, tokenizer, tmp_path):
    return fit_openai_sae(gpt2, tokenizer, tmp_path)


def test_the_fit_records_topic_latents_and_a_calibrated_suppression(fitted):
    _, _, scores = fitted
    latents, odds, bias = scores.topic_latents()
    assert 1 <= len(latents) <= 10 and odds is None and bias is None
    rec = scores.recommended_away
    assert rec.method == "attenuate" and rec.preserve_error and rec.calibrated
    away = scores.calibration.away
    assert away.method == "attenuate" and away.strength == rec.strength
    assert [p["strength"] for p in away.curve] == [1.0, 2.0, 4.0, 8.0]  # attenuate's grid
    assert [p["strength"] for p in away.curve] == sorted(p["strength"] for p in away.curve)
    # The strength is chosen by the teacher-forced ratio (no sampling noise); nothing is sampled
    # but the unsteered continuations it reads.
    assert all(set(p) == {"strength", "neutral_forced_ratio", "topic_forced_ratio"}
               and p["neutral_forced_ratio"] > 0 for p in away.curve)  # fmt: skip
    assert away.strength == strength_at(away.curve, away.target_ratio, "neutral_forced_ratio")
    text = str(scores.report())
    assert re.search(r"steer away +attenuate at strength", text) and "away curve" in text
    assert re.search(r"steer toward +add at strength", text)


def test_default_away_is_the_recommended_suppression(gpt2, fitted):
    """The recommendation (attenuate at its calibrated strength), and ``suppress`` on the
    topic's latents when asked for."""
    sae, ref, scores = fitted
    v, strength = scores.stats["delta_raw"], scores.recommended_away.strength
    gate, odds, bias = scores.topic_gate()
    want = reference_logits(gpt2, IDS, lambda h: steer_sequence(
        ref, h, "attenuate", None, strength=strength, vector=v, topic=gate.tolist(),
        log_odds=odds.tolist(), bias=bias))  # fmt: skip
    with SteeredModel(gpt2, sae, scores=scores, direction="away") as steered:
        got = steered(IDS).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    topic = scores.topic_latents()[0].tolist()
    want = reference_logits(gpt2, IDS, lambda h: steer_sequence(
        ref, h, "suppress", None, strength=1.5, topic=topic))  # fmt: skip
    with SteeredModel(gpt2, sae, scores=scores, direction="away", method="suppress",
                      strength=1.5) as steered:  # fmt: skip
        got = steered(IDS).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert not steering_hooks(gpt2)


@pytest.mark.parametrize("method", ["vector", "ablate"])
def test_vector_baselines_away(gpt2, fitted, method):
    """CAA subtraction (``x - s v``) and directional ablation (``x - s (x·d) d``) along the
    artifact's raw mean difference."""
    sae, ref, scores = fitted
    v = scores.stats["delta_raw"]
    sign = -1.0 if method == "vector" else 1.0
    want = reference_logits(gpt2, IDS, lambda h: steer_sequence(
        ref, h, method, None, strength=sign * 0.7, vector=v))  # fmt: skip
    with SteeredModel(gpt2, sae, scores=scores, direction="away", method=method,
                      strength=0.7) as steered:  # fmt: skip
        got = steered(IDS).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_away_refuses_methods_that_write_a_topic_in(gpt2, fitted):
    sae, _, scores = fitted
    with pytest.raises(ValueError, match="away. steers with suppress, ablate, vector, attenuate"):
        SteeredModel(gpt2, sae, scores=scores, direction="away", method="add")
    with pytest.raises(ValueError, match="Unknown direction 'sideways'"):
        SteeredModel(gpt2, sae, scores=scores, direction="sideways")
    assert not steering_hooks(gpt2)


def test_calibrated_away_strength_and_the_round_trip(gpt2, fitted, tmp_path):
    sae, _, scores = fitted
    with SteeredModel(gpt2, sae, scores=scores, direction="away", strength="calibrated") as s:
        assert s.interventions[0].method == "attenuate"
        assert s.interventions[0].strength == pytest.approx(scores.calibration.away.strength)
    with SteeredModel(gpt2, sae, scores=scores, direction="away", method="vector") as s:
        # CAA subtraction: x - s v, so the intervention adds -s times the mean difference
        s.set_strength(0.7)  # still away: a new strength does not turn the subtraction around
        assert s.interventions[0].strength == -0.7
        got = s(IDS).logits
    with SteeredModel(gpt2, sae, scores=scores, direction="away", method="vector",
                      strength=0.7) as s:  # fmt: skip
        torch.testing.assert_close(got, s(IDS).logits, rtol=0, atol=0)
    back = load_scores(scores.save_pretrained(tmp_path / "art"))
    assert back.recommended_away == scores.recommended_away
    assert back.calibration.away == scores.calibration.away
    assert torch.equal(back.topic_latents()[0], scores.topic_latents()[0])
    plain = FeatureScores(scores=scores.scores, coverage=0.5)  # an artifact from before 0.4
    with pytest.raises(ValueError, match='strength="calibrated" needs a calibration'):
        SteeredModel(gpt2, sae, scores=plain, direction="away", strength="calibrated")


def plain_perplexity(logits, prompt_len, ids):
    """exp(mean NLL) of ``ids[prompt_len:]`` given the earlier tokens, from full-sequence logits."""
    logp = torch.log_softmax(logits[0].double(), dim=-1)
    nll = [-float(logp[t - 1, ids[t]]) for t in range(prompt_len, len(ids))]
    return torch.tensor(sum(nll) / len(nll)).exp()


def test_teacher_forced_perplexities_against_plain_forward_passes(gpt2, tokenizer, fitted):
    """The calibration's side effect: the suppressed model's perplexity of fixed continuations
    (CAA subtraction, ``x - s v``, by method_reference at every position), and the unsteered
    model's, from plain forward passes."""
    sae, ref, scores = fitted
    v = scores.stats["delta_raw"]
    prompts, texts = [[5, 17, 42], [99, 3]], [[250, 7, 8, 9], [11, 12, 13]]
    got = [forced_perplexity(gpt2, tokenizer, sae, scores, "vector", s, prompts, texts)
           for s in (None, 0.5, 2.0)]  # fmt: skip
    for j, strength in enumerate((None, 0.5, 2.0)):
        for i, (prompt, text) in enumerate(zip(prompts, texts, strict=True)):
            ids = torch.tensor([prompt + text])
            if strength is None:
                logits = gpt2(ids).logits
            else:
                logits = reference_logits(gpt2, ids, lambda h, s=strength: steer_sequence(
                    ref, h, "vector", None, strength=-s, vector=v))  # fmt: skip
            want = plain_perplexity(logits.detach(), len(prompt), prompt + text)
            assert float(got[j][i]) == pytest.approx(float(want), rel=1e-4)
    assert not steering_hooks(gpt2)


def test_strength_at_reads_the_forced_ratio_and_old_curves():
    curve = [
        {"strength": 1.0, "neutral_ratio": 1.5, "neutral_forced_ratio": 1.05},
        {"strength": 2.0, "neutral_ratio": 1.2, "neutral_forced_ratio": 1.21},
    ]
    # log 1.1 lies between log 1.05 and log 1.21, a fraction of the way from 1 to 2
    fraction = (math.log(1.1) - math.log(1.05)) / (math.log(1.21) - math.log(1.05))
    assert strength_at(curve, 1.1, "neutral_forced_ratio") == pytest.approx(1 + fraction)
    assert strength_at(curve, 1.1) == pytest.approx(math.log(1.1) / math.log(1.5))
    assert AwayCalibration.neutral_ratio_of(curve[0]) == 1.05
    assert AwayCalibration.neutral_ratio_of({"strength": 1.0, "neutral_ratio": 1.3}) == 1.3


def plain_gate(gpt2, tokenizer, ref, texts, others, k=100):
    """``attenuate``'s posterior written out: per latent, the share of alignment and of reference
    tokens (the first of each text skipped, as every pass of the fit does) it fires on (plus half
    a token, of one more), its log odds; the ``k`` largest among
    latents firing on at least 3 alignment tokens with positive log odds; the bias is the sum of
    log((1 - on) / (1 - off)) over them."""

    def firing(batch):
        fired, tokens = torch.zeros(ref.W_enc.shape[0]), 0
        for text in batch:
            ids = tokenizer(text, return_tensors="pt").input_ids
            hidden = gpt2(ids, output_hidden_states=True).hidden_states[LAYER + 1][0]
            for h in hidden.detach()[1:]:
                xp, _ = ref.preprocess(h.double())
                fired += (ref.act(ref.pre(xp)) > 0).float()
                tokens += 1
        return fired, tokens

    (fa, na), (fr, nr) = firing(texts), firing(others)
    on, off = (fa + 0.5) / (na + 1), (fr + 0.5) / (nr + 1)
    odds = [math.log(a / (1 - a)) - math.log(b / (1 - b))
            for a, b in zip(on.tolist(), off.tolist(), strict=True)]  # fmt: skip
    ok = [i for i in range(len(odds)) if fa[i] >= 3 and odds[i] > 0]
    chosen = sorted(ok, key=lambda i: -odds[i])[:k]
    bias = sum(math.log((1 - float(on[i])) / (1 - float(off[i]))) for i in chosen)
    return chosen, [odds[i] for i in chosen], bias


def test_attenuate_gates_caa_subtraction_by_the_fits_posterior(gpt2, tokenizer, fitted, tmp_path):
    """``attenuate``: ``x - s p(topic | z(x)) v``, with the posterior's latents, log odds and bias
    as the fit records them (against plain counts of firing tokens), per token against
    method_reference; the gate survives the round trip."""
    sae, ref, scores = fitted
    latents, odds, bias = scores.topic_gate()
    want_latents, want_odds, want_bias = plain_gate(gpt2, tokenizer, ref, TEXTS, OTHERS + TEXTS[:1])
    assert set(latents.tolist()) == set(want_latents) and len(latents) == len(want_latents)
    by_latent = dict(zip(want_latents, want_odds, strict=True))
    assert odds.tolist() == pytest.approx([by_latent[i] for i in latents.tolist()], rel=1e-4)
    assert bias == pytest.approx(want_bias, rel=1e-4)
    v = scores.stats["delta_raw"]
    want = reference_logits(gpt2, IDS, lambda h: steer_sequence(
        ref, h, "attenuate", None, strength=2.5, vector=v, topic=latents.tolist(),
        log_odds=odds.tolist(), bias=bias))  # fmt: skip
    with SteeredModel(gpt2, sae, scores=scores, direction="away", method="attenuate",
                      strength=2.5) as steered:  # fmt: skip
        got = steered(IDS).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(got, gpt2(IDS).logits, atol=1e-3)  # it does change something
    back = load_scores(scores.save_pretrained(tmp_path / "gated"))
    for mine, theirs in zip(back.topic_gate(), scores.topic_gate(), strict=True):
        assert torch.equal(mine, theirs) if torch.is_tensor(mine) else mine == theirs
    plain = FeatureScores(scores=scores.scores, coverage=0.5, stats={"delta_raw": v})
    with pytest.raises(ValueError, match="'attenuate' needs the topic direction and the latents"):
        SteeredModel(gpt2, sae, scores=plain, direction="away", method="attenuate")
    assert not steering_hooks(gpt2)


def test_the_calibrations_effect_is_the_topic_words_perplexity_ratio(gpt2, tokenizer, fitted):
    """The away curve's effect: the perplexity, under the suppression, of each alignment text's
    words after its first four (teacher-forced), over the unsteered model's, as a geometric
    mean; attenuate by method_reference at every position, perplexities from plain passes."""
    sae, ref, scores = fitted
    prompts, rests = topic_passages(TEXTS, tokenizer)
    assert prompts == [" ".join(t.split()[:4]) for t in TEXTS]
    assert rests == [tokenizer(" " + " ".join(t.split()[4:]))["input_ids"][:32] for t in TEXTS]
    v = scores.stats["delta_raw"]
    gate, odds, bias = scores.topic_gate()
    curve = scores.calibration.away.curve
    for point in curve:
        logs = []
        for prompt, rest in zip(prompts, rests, strict=True):
            ids = tokenizer(prompt)["input_ids"] + rest
            base = plain_perplexity(gpt2(torch.tensor([ids])).logits.detach(), len(ids) - len(rest),
                                    ids)  # fmt: skip
            def attenuated(h, s=point["strength"]):
                return steer_sequence(ref, h, "attenuate", None, strength=s, vector=v,
                                      topic=gate.tolist(), log_odds=odds.tolist(), bias=bias)

            logits = reference_logits(gpt2, torch.tensor([ids]), attenuated)
            steered = plain_perplexity(logits.detach(), len(ids) - len(rest), ids)
            logs.append(math.log(float(steered) / float(base)))
        assert point["topic_forced_ratio"] == pytest.approx(math.exp(sum(logs) / len(logs)),
                                                            rel=1e-4)  # fmt: skip
    assert curve[-1]["topic_forced_ratio"] > 1  # the strongest makes the topic's words unlikelier
