"""The playground behind chat and app, on the shipped demo model: what it shows is what the
library's generation path gives for the same settings; bad input raises one clear message."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from hf_sae_steer.cli.playground import BASE, COMPARE, STEERED, Playground
from hf_sae_steer.cli.settings import (
    PlaygroundError,
    Settings,
    parse_direction,
    parse_method,
    parse_positions,
    parse_seed,
    parse_strength,
    parse_switch,
    parse_tokens,
)
from hf_sae_steer.generation import continue_prompts
from hf_sae_steer.steering import live
from hf_sae_steer.steering.steered import SteeredModel

DEMO = Path(__file__).resolve().parents[1] / "storage" / "demo"


def demo_strength() -> str:
    """The demo artifact's recommended strength as the playground prints it."""
    from hf_sae_steer.scores.record import load_scores

    return f"{load_scores(DEMO / 'scores').recommended['strength']:.3g}"
PROMPT = "The children went"


@pytest.fixture(scope="module")
def playground() -> Playground:
    return Playground.load(settings=Settings(max_new_tokens=10))


def _steered_text(pg: Playground, prompt: str, **options) -> str:
    with SteeredModel(pg.model, pg.sae, scores=pg.scores, **options) as steered:
        return continue_prompts(steered, pg.tokenizer, [prompt], max_new_tokens=10)[0]


def test_run_matches_the_library_for_the_recommended_steering(playground):
    outputs = playground.run(PROMPT)
    assert list(outputs) == [BASE, STEERED]
    base = continue_prompts(playground.model, playground.tokenizer, [PROMPT], max_new_tokens=10)
    assert outputs[BASE].text == base[0]
    assert outputs[STEERED].text == _steered_text(playground, PROMPT)  # method=None: recommended
    assert outputs[STEERED].text != outputs[BASE].text
    assert all(out.seconds is not None and out.seconds > 0 for out in outputs.values())
    assert not live.live_steerings(playground.model)  # the model is left unsteered


def test_settings_reach_the_steering(playground):
    settings = Settings(method="clamp", strength=0.5, positions="generated", preserve_error=True,
                        max_new_tokens=10)  # fmt: skip
    outputs = playground.run(PROMPT, settings)
    want = _steered_text(
        playground, PROMPT, method="clamp", strength=0.5, positions="generated", preserve_error=True
    )
    assert outputs[STEERED].text == want
    assert playground.describe(settings) == (
        "clamp at strength 0.5, preserve_error on, positions generated"
    )


def test_swap_means_what_the_demo_means(playground):
    # issue 23: the demo's swap steered with the reference rule's scores, the chat's with the
    # default ones. Now both use the reference rule's scores, and say so.
    from hf_sae_steer.cli.demo import REFERENCE, run_demo
    from hf_sae_steer.scores.record import load_scores

    seed = load_scores(DEMO / "scores_seed")
    assert seed.rule == "seed" and playground.reference_scores is not None
    settings = Settings(method="swap", strength=0.5, preserve_error=True, max_new_tokens=10)
    outputs = playground.run(PROMPT, settings)
    with SteeredModel(playground.model, playground.sae, scores=seed, method="swap",
                      strength=0.5, preserve_error=True) as steered:  # fmt: skip
        want = continue_prompts(steered, playground.tokenizer, [PROMPT], max_new_tokens=10)[0]
    assert outputs[STEERED].text == want
    # (the default scores swap to another text: the check above tells the two apart)
    assert want != _steered_text(playground, PROMPT, method="swap", strength=0.5,
                                 preserve_error=True)  # fmt: skip
    assert playground.describe(settings) == (
        "swap on the reference rule's scores (seed) at strength 0.5, preserve_error on, "
        "positions all"
    )
    shown = run_demo(prompts=[PROMPT], alignment=None, n_prompts=1, max_new_tokens=10,
                     progress=False)  # fmt: skip
    swap = Settings(method="swap", max_new_tokens=10)
    samples = playground.samples(PROMPT, swap, n=len(shown.rows[0][REFERENCE]))[STEERED]
    assert [s.text for s in shown.rows[0][REFERENCE]] == [s.text for s in samples]
    assert "on the reference rule's scores (seed" in shown.steering_line()
    # Without reference-rule scores, swap steers with the scores loaded, and says which.
    bare = Playground(playground.model, playground.tokenizer, playground.sae,
                      playground.loaded_scores)  # fmt: skip
    assert bare.describe(swap).startswith("swap on the loaded scores (rule output) at")
    assert bare.run(PROMPT, swap)[STEERED].text == _steered_text(bare, PROMPT, method="swap")


def test_new_scores_steer_as_they_recommend(playground):
    # issue 23: after :topic the chat kept the method picked earlier.
    try:
        playground.update(method="swap", strength=0.5, preserve_error=True)
        steering = playground.use_scores(playground.loaded_scores, topic="yours")
        assert (playground.settings.method, playground.settings.strength) == ("recommended", None)
        assert playground.settings.preserve_error is None
        recommended = f"add (the scores' recommendation) at strength {demo_strength()}"
        assert steering.startswith(recommended)
        assert playground.describe(Settings(method="swap")).startswith(
            "swap on your topic's scores (rule output) at"
        )  # a topic has no reference-rule scores of its own
        playground.update(method="clamp")
        playground.use_scores(playground.loaded_scores, topic=None)  # :topic reset
        assert playground.settings.method == "recommended"
    finally:
        playground.use_scores(playground.loaded_scores, topic=None)
        playground.update(method="recommended")


def test_stream_grows_and_ends_with_the_same_texts_and_times(playground):
    snapshots = list(playground.stream(PROMPT))
    final = snapshots[-1]
    assert {name: out.text for name, out in final.items()} == {
        name: out.text for name, out in playground.run(PROMPT).items()
    }
    assert all(out.seconds is not None for out in final.values())
    # tokens arrive before a model is done: some snapshot shows steered text without its time
    assert any(s[STEERED].text and s[STEERED].seconds is None for s in snapshots)
    base_texts = [s[BASE].text for s in snapshots if s[BASE].seconds is None]
    assert base_texts == sorted(base_texts, key=len)  # it only grows
    assert not live.live_steerings(playground.model)


def test_update_resets_strength_on_a_new_method_and_rejects_bad_values():
    pg = Playground.load()
    assert pg.describe().startswith(
        f"add (the scores' recommendation) at strength {demo_strength()}"
    )
    assert pg.update(method="swap", strength=0.25).startswith(
        "swap on the reference rule's scores (seed) at strength 0.25"
    )
    assert pg.update(method="clamp").startswith("clamp at strength 1,")  # strength reset
    before = pg.settings
    with pytest.raises(PlaygroundError, match="Unknown method 'amplify'"):
        pg.update(method="amplify")
    with pytest.raises(PlaygroundError, match="Unknown positions"):
        pg.update(positions="middle")
    with pytest.raises(PlaygroundError, match="Unknown settings"):
        pg.update(colour="red")
    assert pg.settings == before


def test_prompt_checks(playground):
    with pytest.raises(PlaygroundError, match="prompt is empty"):
        playground.run("   ")
    with pytest.raises(PlaygroundError, match="exceeds the model's context of 128 tokens"):
        playground.run("word " * 200)


def test_prompts_that_are_not_text_are_refused(playground):
    with pytest.raises(PlaygroundError, match="is not UTF-8 text"):
        playground.run("caf\udce9")  # a byte that was not UTF-8, as Python decodes it
    with pytest.raises(PlaygroundError, match="The prompt must be text; got int"):
        playground.run(123)


def test_parsers_refuse_what_is_not_their_kind():
    # The web app's HTTP API passes whatever JSON a client sends.
    for parse, value in [(parse_method, 5), (parse_positions, 3.0), (parse_method, None)]:
        with pytest.raises(PlaygroundError):
            parse(value)
    with pytest.raises(PlaygroundError, match="sample takes on, off or default; got 3"):
        parse_switch(3, "sample")
    with pytest.raises(PlaygroundError, match="whole number from 1 to 512; got '1.5'"):
        parse_tokens("1.5")
    with pytest.raises(PlaygroundError, match="whole number"):
        parse_tokens(2.5)
    assert parse_tokens(32.0) == 32 and parse_tokens("7") == 7  # a slider sends floats
    assert parse_seed("42") == 42 and parse_seed(0) == 0
    for bad in ("1" * 23, "-1", "1.5", "x", 2**32):
        with pytest.raises(PlaygroundError, match="whole number from 0 to 4294967295"):
            parse_seed(bad)


def test_parsers_name_the_problem():
    assert parse_method(" Swap ") == "swap" and parse_positions("prompt") == "prompt"
    assert parse_strength("") is None and parse_strength("default") is None
    assert parse_strength("2.5") == 2.5
    assert parse_switch("on", "x") is True and parse_switch("off", "x") is False
    assert parse_switch("default", "x") is None and parse_tokens("12") == 12
    with pytest.raises(PlaygroundError, match="Strength must be a number"):
        parse_strength("abc")
    with pytest.raises(PlaygroundError, match="Strength must be a number"):
        parse_strength("nan")
    with pytest.raises(PlaygroundError, match=":error takes on, off or default"):
        parse_switch("maybe", ":error")
    with pytest.raises(PlaygroundError, match="whole number from 1 to 512"):
        parse_tokens("0")


def test_top_latents_with_the_tokens_that_fire_them(playground):
    rows = playground.top_latents(5, per_latent=2)
    assert [r.rank for r in rows] == list(range(1, len(rows) + 1)) and rows
    assert [r.score for r in rows] == sorted((r.score for r in rows), reverse=True)
    latents, weights = playground.scores.latent_weights()
    chosen = dict(zip(latents.tolist(), weights.tolist(), strict=True))
    assert all(r.weight == pytest.approx(chosen[r.latent]) for r in rows if r.latent in chosen)
    fired = [ex for r in rows for ex in r.examples]
    assert fired and all(ex.activation > 0 and ex.token for ex in fired)
    assert all(len(r.examples) <= 2 for r in rows)
    assert playground.top_latents(5, per_latent=2) is rows  # cached
    assert "coverage" in playground.report() and "Recommended steering" in playground.report()


def test_compare_model_gets_its_own_continuation(playground, tmp_path):
    from transformers import AutoModelForCausalLM

    copy = AutoModelForCausalLM.from_pretrained(DEMO / "model")
    with torch.no_grad():
        copy.lm_head.weight.mul_(1.5)  # a changed copy: its text must be its own
    pg = Playground(
        playground.model, playground.tokenizer, playground.sae, playground.scores,
        compare=(copy.eval(), playground.tokenizer), settings=Settings(max_new_tokens=10),
    )  # fmt: skip
    outputs = pg.run(PROMPT)
    assert list(outputs) == [BASE, STEERED, COMPARE]
    want = continue_prompts(copy, playground.tokenizer, [PROMPT], max_new_tokens=10)[0]
    assert outputs[COMPARE].text == want and outputs[COMPARE].seconds > 0


class RecordingTokenizer:
    """The real tokenizer, recording the length of every text it is asked to tokenize."""

    def __init__(self, tokenizer):
        self._tokenizer, self.lengths = tokenizer, []

    def __call__(self, text, *args, **kwargs):
        texts = [text] if isinstance(text, str) else list(text)
        self.lengths += [len(t) for t in texts]
        return self._tokenizer(text, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


def test_a_huge_prompt_is_refused_before_it_is_tokenized(playground):
    # A 40 MB request once took the server to 5.7 GB: tokenizing comes after a length check
    # that costs nothing, so what is tokenized stays bounded by a few bytes per context token.
    recording = RecordingTokenizer(playground.tokenizer)
    pg = Playground(playground.model, recording, playground.sae, playground.scores,
                    settings=Settings(max_new_tokens=10))  # fmt: skip
    huge = "word " * 2_000_000  # 10 MB
    with pytest.raises(PlaygroundError, match=r"10000000 characters.*context of 128 tokens"):
        pg.run(huge)
    with pytest.raises(PlaygroundError, match="characters"):
        list(pg.stream(huge))
    longest = max(map(len, recording.get_vocab()))
    assert max(recording.lengths, default=0) <= 128 * longest  # never the huge prompt
    # Below the bound, tokens decide, as before.
    with pytest.raises(PlaygroundError, match="exceeds the model's context of 128 tokens"):
        pg.run("word " * 200)
    assert max(recording.lengths) == len("word " * 200)


def test_generate_refuses_a_huge_prompt_before_tokenizing(playground):
    from hf_sae_steer.generation import continue_prompts

    recording = RecordingTokenizer(playground.tokenizer)
    with pytest.raises(ValueError, match="characters"):
        continue_prompts(playground.model, recording, ["hi", "word " * 1_000_000])
    assert recording.lengths == []


def test_effect_follows_the_settings_and_the_scores(playground):
    from hf_sae_steer.scores.record import FeatureScores
    from hf_sae_steer.steering.effect import effect_of

    recommended = playground.effect()
    assert playground.effect() is recommended  # cached
    assert recommended == effect_of(playground.model, playground.tokenizer, playground.sae,
                                    scores=playground.scores)  # fmt: skip
    swap = playground.effect(Settings(method="swap", strength=0.5))
    assert swap != recommended and not live.live_steerings(playground.model)
    other = FeatureScores(scores=torch.rand(playground.sae.d_sae,
                                            generator=torch.Generator().manual_seed(3)),
                          coverage=1.0)  # fmt: skip
    try:
        playground.use_scores(other, "random")
        assert playground.effect() != recommended  # new scores: measured again
    finally:
        playground.use_scores(playground.loaded_scores)
    assert playground.effect() == recommended


def test_samples_mark_the_effect_words_in_base_and_steered(playground):
    shown = playground.samples(PROMPT, n=2)
    assert list(shown) == [BASE, STEERED] and all(len(s) == 2 for s in shown.values())
    words = playground.effect().words(20)
    for samples in shown.values():
        for sample in samples:
            assert all(any(w.startswith(t) for t in words) for w in sample.words)
    assert shown[BASE] != shown[STEERED]
    with pytest.raises(PlaygroundError, match="The prompt is empty"):
        playground.samples("  ")


def test_direction_away_steers_with_the_recommended_suppression(playground):
    settings = replace(playground.settings, direction="away")
    assert playground.describe(settings).endswith(", away from the topic")
    outputs = playground.run(PROMPT, settings)
    assert outputs[STEERED].text == _steered_text(playground, PROMPT, direction="away")
    with pytest.raises(PlaygroundError, match="Unknown direction 'sideways'"):
        parse_direction("sideways")
    with pytest.raises(PlaygroundError, match="Unknown direction"):
        playground.update(direction="up")
    assert not live.live_steerings(playground.model)
