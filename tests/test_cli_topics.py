"""A topic of your own in the playground (cli/topics.py), on the shipped demo: the background fit
gives what ``FeatureScores.fit`` gives, steers with it, reports progress, cancels without a
trace, and saves an artifact that loads back; bad input is one clear message."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pytest
import torch
from topic_texts import DEMO, FOOD, fit_on_demo, steered_on_demo

from hf_sae_steer import FeatureScores
from hf_sae_steer.cli import topics as topics_module
from hf_sae_steer.cli.demo import recommended_line
from hf_sae_steer.cli.playground import STEERED, Playground
from hf_sae_steer.cli.settings import PlaygroundError, Settings
from hf_sae_steer.cli.topics import (
    CANCELLED,
    DONE,
    MAX_EXAMPLE_CHARS,
    MAX_EXAMPLES,
    MIN_EXAMPLES,
    Topics,
    check_examples,
    load_examples,
    parse_examples,
)
from hf_sae_steer.scores.record import ARTIFACT_FILES
from hf_sae_steer.steering import live

PROMPT = "The children went"
TOKENS = 8


@pytest.fixture(scope="module")
def playground() -> Playground:
    return Playground.load(settings=Settings(max_new_tokens=TOKENS))


@pytest.fixture(scope="module")
def expected() -> FeatureScores:
    return fit_on_demo(FOOD)


@pytest.fixture
def topics(playground):
    topics = Topics(playground)
    yield topics
    topics.reset()  # the next test starts from the loaded scores


def _hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_examples_are_checked_with_one_clear_message(tmp_path):
    assert parse_examples("  a \n\n b\n") == ["a", "b"]
    assert parse_examples(["a", " ", "b "]) == ["a", "b"]
    assert check_examples(["a", "b", "a", "c", "", "d"]) == ["a", "b", "c", "d"]
    with pytest.raises(PlaygroundError, match=f"at least {MIN_EXAMPLES} example texts.*got 2"):
        check_examples(["one text", "another"])
    with pytest.raises(PlaygroundError, match="got 1 distinct"):
        check_examples(["same"] * 5)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(PlaygroundError, match="from empty.txt: No prompts in empty.txt"):
        load_examples(empty, shown="empty.txt")
    with pytest.raises(PlaygroundError, match="No such prompt file"):
        load_examples(tmp_path / "missing.txt")
    rows = tmp_path / "food.jsonl"
    rows.write_text("".join(f'{{"text": "{t}", "n": {i}}}\n' for i, t in enumerate(FOOD)))
    assert load_examples(rows) == FOOD


def test_topic_texts_have_a_size_limit(tmp_path):
    # issue 23: a 10 MB line went through :topic FILE and /fit_topic.
    huge = "word " * 2_000_000
    for texts in ([*FOOD[:4], huge], f"{huge}\n" + "\n".join(FOOD)):
        with pytest.raises(PlaygroundError, match=f"at most {MAX_EXAMPLE_CHARS:,} characters"):
            check_examples(parse_examples(texts))
    many = [f"Text number {i} about bread." for i in range(MAX_EXAMPLES + 1)]
    with pytest.raises(PlaygroundError, match=f"more than the {MAX_EXAMPLES:,}"):
        check_examples(many)
    assert len(check_examples(many[:MAX_EXAMPLES])) == MAX_EXAMPLES
    edge = [*FOOD[:3], "x" * MAX_EXAMPLE_CHARS]
    assert check_examples(edge) == edge
    line = tmp_path / "line.txt"
    line.write_text("\n".join([*FOOD, huge]) + "\n")
    with pytest.raises(PlaygroundError, match=r"line.txt: text 7 is 9,999,999 characters") as e:
        load_examples(line, shown="line.txt")
    assert "\n" not in str(e.value)
    big = tmp_path / "big.txt"
    with big.open("w") as f:
        f.truncate(64 << 20)  # 64 MB (sparse): refused before it is read
    with pytest.raises(PlaygroundError, match="big.txt is 64 MB; a topic file may be at most"):
        load_examples(big, shown="big.txt")


def test_topic_sources_that_are_no_file_are_named(tmp_path):
    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)  # :topic FIFO said "No such prompt file" (issue 23)
    with pytest.raises(PlaygroundError, match="pipe.txt is not a regular file"):
        load_examples(fifo, shown="pipe.txt")
    folder = tmp_path / "stuff"  # :topic /tmp scanned the folder for minutes (issue 23)
    folder.mkdir()
    (folder / "program.py").write_text("print()\n")
    with pytest.raises(PlaygroundError, match="stuff is a folder but not a dataset"):
        load_examples(folder, shown="stuff")


def test_bad_save_destinations_are_one_clear_line(playground, topics, tmp_path):
    playground.use_scores(playground.loaded_scores, topic="loaded")  # a topic, without a fit
    (tmp_path / "file.txt").write_text("mine")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    cases = [
        (tmp_path / "file.txt" / "sub", "file.txt is a file"),
        ("/dev/null", "/dev/null is not a folder"),
        (fifo, "fifo is not a folder"),
        (tmp_path / "file.txt", "file.txt is a file, not a folder"),
        ("bad\0name", "Cannot save to 'bad\\x00name'"),
        ("x" * 300, "File name too long"),
        ("~no-such-user-here/topic", "no user no-such-user-here"),
        ("/proc/no/such/place", "Cannot write into /proc"),
    ]
    for folder, message in cases:
        with pytest.raises(PlaygroundError) as caught:
            topics.save(folder)
        got = str(caught.value)
        assert message in got and "\n" not in got and "\0" not in got, got
    assert (tmp_path / "file.txt").read_text() == "mine"


def test_a_fit_steers_like_the_library_and_leaves_the_base_model(playground, topics, expected):
    loaded = playground.run(PROMPT)
    hooks = _hooks(playground.model)
    run = topics.start(FOOD, "food")
    seen = []
    while not run.wait(0.02):
        seen.append(run.status)
    status = run.status
    assert status.state == DONE and status.fraction == 1.0
    assert "fitted your topic (food)" in status.line()
    fractions = [s.fraction for s in seen]
    assert fractions == sorted(fractions) and all(0 <= f < 1 for f in fractions)
    got = playground.scores
    assert got is run.result and playground.topic == "food"
    torch.testing.assert_close(got.scores, expected.scores)
    assert got.rule == expected.rule and got.recommended == expected.recommended
    assert got.alignment_hash == expected.alignment_hash
    assert got.reference_hash == expected.reference_hash  # the demo's reference set

    outputs = playground.run(PROMPT)
    assert outputs[STEERED].text == steered_on_demo(expected, PROMPT, TOKENS)
    assert outputs[STEERED].text != loaded[STEERED].text  # the topic changed the steering
    assert outputs["base"].text == loaded["base"].text  # the base model is untouched
    assert _hooks(playground.model) == hooks and not live.live_steerings(playground.model)
    assert "steering with your topic (food)" in playground.setup_line()
    assert playground.report() == f"{recommended_line(expected)}\n{expected.report()}"

    topics.reset()
    assert playground.scores is playground.loaded_scores and playground.topic is None
    assert playground.run(PROMPT)[STEERED].text == loaded[STEERED].text


def test_cancel_leaves_the_steering_and_the_model_as_they_were(playground, topics, monkeypatch):
    loaded, hooks = playground.scores, _hooks(playground.model)
    with playground.model_lock:  # a turn is running: the fit waits, and is cancelled meanwhile
        run = topics.start(FOOD, "food")
        assert "waiting for the model" in run.status.phase
        with pytest.raises(PlaygroundError, match="A topic is being fitted"):
            topics.start(FOOD, "again")  # one fit at a time
        with pytest.raises(PlaygroundError, match="A topic is being fitted"):
            topics.reset()
        assert topics.cancel()
    assert run.wait(60) and run.status.state == CANCELLED
    assert playground.scores is loaded and playground.topic is None

    real_fit = topics_module.fit_scores

    def fit_cancelled_midway(*args, progress, **kwargs):  # the real fit, cancelled in the walk
        def report(phase, done, total):
            if phase == "reference":
                topics.cancel()
            progress(phase, done, total)

        return real_fit(*args, progress=report, **kwargs)

    monkeypatch.setattr(topics_module, "fit_scores", fit_cancelled_midway)
    run = topics.start(FOOD, "food")
    assert run.wait(60) and run.status.state == CANCELLED
    assert "the steering is unchanged" in run.status.line()
    assert playground.scores is loaded and playground.topic is None
    assert _hooks(playground.model) == hooks and not live.live_steerings(playground.model)
    assert topics.cancel() is False  # nothing runs any more


def test_bad_requests_are_refused_and_the_playground_keeps_working(playground, topics):
    with pytest.raises(PlaygroundError, match="at least 4 example texts"):
        topics.start(FOOD[:2], "two")
    with pytest.raises(PlaygroundError, match="No topic of your own yet"):
        topics.save("anywhere")
    bare = Playground(playground.model, playground.tokenizer, playground.sae,
                      playground.loaded_scores)  # fmt: skip
    with pytest.raises(PlaygroundError, match="No reference set.*--reference FILE"):
        Topics(bare).start(FOOD, "food")
    assert playground.run(PROMPT)[STEERED].text  # still steering with the loaded scores


def test_scores_that_cannot_steer_change_nothing(playground):
    hooks = _hooks(playground.model)
    other_sae = FeatureScores(scores=torch.zeros(playground.sae.d_sae + 1), coverage=0.0)
    with pytest.raises(PlaygroundError, match="belong to another SAE"):
        playground.use_scores(other_sae, topic="wrong")
    assert playground.scores is playground.loaded_scores and playground.topic is None
    assert _hooks(playground.model) == hooks


def test_the_reports_warnings_come_with_the_status(playground):
    tiny = ["The cat sat.", "A dog ran.", "Rain fell."]  # a reference set far too small
    small = Playground(playground.model, playground.tokenizer, playground.sae,
                       playground.loaded_scores, reference_prompts=tiny)  # fmt: skip
    status = Topics(small).fit(FOOD, "food")
    assert status.warnings and list(status.warnings) == small.scores.quality.warnings
    assert any(note.startswith("Coverage is") for note in status.warnings)


def test_saved_topic_loads_back_and_foreign_files_are_kept(playground, topics, tmp_path, expected):
    topics.fit(FOOD, "food")
    folder = topics.save(tmp_path / "food-scores")
    back = FeatureScores.from_pretrained(folder)
    torch.testing.assert_close(back.scores, expected.scores)
    assert back.recommended == expected.recommended and back.rule == expected.rule
    topics.save(folder)  # our own earlier save: replaced
    # the artifact's files, beside the hidden manifest of what we wrote (hf_sae_steer.folders)
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == sorted(
        ARTIFACT_FILES
    )

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(PlaygroundError, match="holds files the playground did not write"):
        topics.save(foreign)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    assert (foreign / "notes.txt").read_text() == "keep me"
    with pytest.raises(PlaygroundError, match="is a file"):
        topics.save(foreign / "notes.txt")

    archive = topics.save_zip(tmp_path / "download")
    with zipfile.ZipFile(archive) as zipped:
        names = sorted(Path(n).name for n in zipped.namelist()
                       if not n.endswith("/") and not Path(n).name.startswith("."))  # fmt: skip
        zipped.extractall(tmp_path / "unzipped")
    assert names == sorted(ARTIFACT_FILES)
    unzipped = FeatureScores.from_pretrained(tmp_path / "unzipped" / "topic-scores")
    torch.testing.assert_close(unzipped.scores, expected.scores)


def test_reference_file_option(tmp_path):
    reference = tmp_path / "reference.txt"
    reference.write_text((DEMO / "reference.txt").read_text())
    pg = Playground.load(
        model=str(DEMO / "model"), sae=str(DEMO / "sae"), scores=str(DEMO / "scores"),
        reference=reference,
    )  # fmt: skip
    assert pg.reference_prompts == (DEMO / "reference.txt").read_text().splitlines()
    assert pg.latent_prompts is None
