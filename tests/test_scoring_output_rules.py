"""The rules that read the model's output (docs/method.md §6): ``output`` and ``trained``.

The output scores are checked against a plainly written finite difference: the margin (mean
token log-likelihood of the alignment texts minus the reference texts') measured one text at a
time with a forward hook that adds ``±ε`` times a decoder row, scaled as ``add`` scales it.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from tiny_models import letters, tiny_gpt2, tiny_topk_sae, varied_prompts

from hf_sae_steer import FeatureScores
from hf_sae_steer.sae import SAEConfig, build_sae, load_sae

ALIGNMENT = [
    "The patient had a fever and a cough.", "A doctor treated the infection of the heart.",
    "Symptoms of the infection include fever.", "The doctor examined the lungs of the patient.",
    "Antibiotics treat the infection and the fever.", "The heart and lungs of the child.",
]  # fmt: skip


@pytest.fixture(scope="module")
def setup(tokenizer, tmp_path_factory):
    model = tiny_gpt2(len(tokenizer), n_layer=3)
    g = torch.Generator().manual_seed(3)
    d, n = 32, 48
    state = {
        "W_enc": torch.randn(d, n, generator=g) / d**0.5,
        "b_enc": torch.randn(n, generator=g) * 0.1,
        "W_dec": torch.randn(n, d, generator=g) / n**0.5,
        "b_dec": torch.randn(d, generator=g) * 0.1,
    }
    cfg = SAEConfig(d_in=d, d_sae=n, activation="topk", k=6, layer=1, site="resid_post",
                    normalize_activations="layer_norm")  # fmt: skip
    folder = build_sae(cfg, state).save_pretrained(tmp_path_factory.mktemp("sae") / "sae")
    return model, tokenizer, load_sae(folder), varied_prompts(24)


def fit(setup, rule, **options):
    model, tok, sae, reference = setup
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return FeatureScores.fit(model, tok, sae, reference=reference, alignment=ALIGNMENT,
                                 rule=rule, embedder=letters, progress=False,
                                 calibrate_strength=False, **options)  # fmt: skip


def plain_margin(model, tok, sae, texts_a, texts_r, row: torch.Tensor | None, eps: float) -> float:
    """Mean over texts of each text's mean token log-likelihood, alignment minus reference,
    with ``eps * σ(x) * row`` added to block 1's output at every token (σ: the layer-norm std)."""

    def hook(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        if row is not None:
            sigma = hidden.std(dim=-1, keepdim=True)
            hidden = hidden + eps * sigma * row
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    def mean_logp(texts):
        total = 0.0
        for text in texts:
            ids = tok(text)["input_ids"][:24]  # the margin reads the first 24 tokens (§6)
            with torch.no_grad():
                logits = model(torch.tensor([ids])).logits[0].double()
            logp = torch.log_softmax(logits[:-1], -1)
            total += float(logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].mean())
        return total / len(texts)

    handle = model.transformer.h[1].register_forward_hook(hook)
    try:
        return mean_logp(texts_a) - mean_logp(texts_r)
    finally:
        handle.remove()


def test_output_scores_are_the_first_order_change_of_the_margin(setup):
    model, tok, sae, reference = setup
    scores = fit(setup, "output", k=5)
    output = scores.stats["output_scores"]
    eps = 1e-3
    for i in torch.topk(output.abs(), 3).indices.tolist():
        row = sae.W_dec[i].detach().float()
        plus = plain_margin(model, tok, sae, ALIGNMENT, reference, row, eps)
        minus = plain_margin(model, tok, sae, ALIGNMENT, reference, row, -eps)
        assert float(output[i]) == pytest.approx((plus - minus) / (2 * eps), rel=0.05, abs=1e-4)


def test_output_rule_keeps_only_rows_that_raise_the_topic(setup):
    scores = fit(setup, "output", k=5)
    latents, weights = scores.latent_weights()
    assert 1 <= len(latents) <= 5 and (weights > 0).all()
    assert (scores.stats["output_scores"][latents] > 0).all()
    assert scores.recommended["method"] == "add"
    assert scores.rule == "output"


def test_trained_rule_is_sparse_non_negative_deterministic_and_improves_its_objective(setup):
    model, tok, sae, reference = setup
    first = fit(setup, "trained", rule_options={"steps": 12, "max_latents": 6, "pool": 16})
    again = fit(setup, "trained", rule_options={"steps": 12, "max_latents": 6, "pool": 16})
    latents, weights = first.latent_weights()
    assert 1 <= len(latents) <= 6 and (weights > 0).all()
    assert torch.equal(latents, again.latent_weights()[0])
    assert torch.allclose(weights, again.latent_weights()[1])
    # The trained direction raises the margin more than mean_diff's at the same norm.
    baseline = fit(setup, "mean_diff", k=5)

    def margin_of(artifact):
        lat, w = artifact.latent_weights()
        u = (w[:, None] * sae.W_dec[lat].detach()).sum(0)
        u = u / u.norm() * 0.5 * artifact.calibration["mean_norm"]
        return plain_margin(model, tok, sae, ALIGNMENT, reference, u, 1.0)

    assert margin_of(first) > margin_of(baseline)


def test_trained_rule_options_are_checked(setup):
    with pytest.raises(ValueError, match="objective"):
        fit(setup, "trained", rule_options={"objective": "magic"})
    with pytest.raises(ValueError, match="Bad options"):
        fit(setup, "trained", rule_options={"no_such_option": 1})


def test_output_rules_need_the_reference_texts_again(setup):
    model, tok, sae, _ = setup
    once = iter(varied_prompts(12))
    with pytest.raises(ValueError, match="second time"):
        FeatureScores.fit(model, tok, sae, reference=once, alignment=ALIGNMENT, rule="output",
                          embedder=letters, progress=False, calibrate_strength=False)  # fmt: skip


def test_seed_rule_still_untouched_by_the_new_rules(setup, tmp_path):
    # The reference rule keeps its own recommendation: swap at 1, never calibrated.
    model, tok, sae, reference = setup
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = FeatureScores.fit(model, tok, tiny_topk_sae(), reference=reference,
                                   alignment=ALIGNMENT, rule="seed", embedder=letters,
                                   progress=False)  # fmt: skip
    assert scores.recommended["method"] == "swap" and "fluency" not in scores.calibration


# -- issue 23: degenerate alignment sets under the rules that read the output ----------------
@pytest.mark.parametrize("rule", ["output", "trained", "mean_diff"])
@pytest.mark.parametrize(
    "alignment, held",
    [(ALIGNMENT[:1], "1 distinct text:"), (ALIGNMENT[:1] * 5, "1 distinct text (of 5 given)")],
)
def test_one_text_or_identical_texts_warn(setup, rule, alignment, held):
    model, tok, sae, reference = setup
    with pytest.warns(UserWarning, match="The alignment set holds only") as record:
        got = FeatureScores.fit(model, tok, sae, reference=reference, alignment=alignment,
                                rule=rule, embedder=letters, progress=False,
                                calibrate_strength=False)  # fmt: skip
    notes = [w for w in got.report().warnings if w.startswith("The alignment set holds only")]
    assert len(notes) == 1 and held in notes[0] and "not a topic" in notes[0]
    assert notes[0] in [str(w.message) for w in record]


@pytest.mark.parametrize("rule", ["output", "trained", "mean_diff"])
def test_one_token_texts_name_the_rule_used(setup, rule):
    model, tok, sae, reference = setup
    one_token = ["The", "A", "B", "C"]
    assert all(len(tok(t)["input_ids"]) == 1 for t in one_token)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError) as caught:
            FeatureScores.fit(model, tok, sae, reference=reference, alignment=one_token,
                              rule=rule, embedder=letters, progress=False,
                              calibrate_strength=False)  # fmt: skip
    message = str(caught.value)
    assert message.startswith(f"{rule}:") and "\n" not in message, message
    others = {"output", "trained", "mean_diff"} - {rule}
    assert not any(other in message for other in others), message
    assert "one token" in message or "single token" in message
