"""What ``hf-sae-steer serve`` sets up, and its bad input: one line, exit 2, before serving."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="hf-sae-steer serve needs the [serve] extra")

from hf_sae_steer.cli.main import main  # noqa: E402
from hf_sae_steer.serving.server import DEMO_NAME, setup_from, start_engine  # noqa: E402

DEMO = Path(__file__).resolve().parents[1] / "storage" / "demo"


def test_no_model_serves_the_demo_with_its_medical_concept():
    setup = setup_from(demo=DEMO)
    assert setup.model == str(DEMO / "model") and setup.saes == [str(DEMO / "sae")]
    assert setup.concepts == {"medical": str(DEMO / "scores")} and setup.served_name == DEMO_NAME
    mine = setup_from(demo=DEMO, concepts={"x": "y"}, served_name="demo")
    assert mine.concepts == {"x": "y"} and mine.served_name == "demo"
    other = setup_from(model="m", saes=["s"], concepts={"a": "b"})
    assert (other.model, other.saes, other.served_name) == ("m", ["s"], "m")


def test_the_transformers_engine_starts_and_closes_cleanly():
    engine, library = start_engine("transformers", setup_from(demo=DEMO))
    try:
        assert list(library.concepts) == ["medical"] and engine.context_length == 128
        assert engine.stats()["running"] == 0
    finally:
        engine.close()
    from hf_sae_steer.sites.hooks import steering_hooks

    assert not steering_hooks(library.model)  # the hooks left with the engine


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", str(DEMO / "model")], "Pass --sae with --model"),
        (["--sae", str(DEMO / "sae")], "--sae needs --model"),
        (["--concept", "medical"], "--concept takes NAME=PATH_OR_HUB_ID"),
        (["--concept", "a=x", "--concept", "a=y"], "Concept 'a' is given twice"),
        (["--concepts-dir", "/nonexistent"], "is not a folder"),
        (["--engine", "tgi"], "Unknown engine 'tgi'"),
        (["--allowed-origins", "ui.example"], "--allowed-origins 'ui.example' is not an origin"),
        (["--api-key", ""], "--api-key is empty"),
        (["--concept", f"m={DEMO / 'nothing'}"], "does not exist"),
        (["--model", str(DEMO / "model"), "--sae", str(DEMO / "sae"), "--concept",
          f"m={DEMO / 'scores'}", "--device", "banana"], "Unknown device 'banana'"),
        (["--steered-model", "medical-demo"], "--steered-model takes NAME=CONCEPT[:key=value"),
        (["--steered-model", "x=medical:colour=red"], "option 'colour=red' is not key=value"),
        (["--steered-model", "x=medical:direction=up"], "direction 'up' is unknown"),
        (["--steered-model", "x=medical:strength=1e9"], "between -1000 and 1000"),
        (["--steered-model", "a=medical", "--steered-model", "a=medical:strength=2"],
         "--steered-model 'a' is given twice"),
        (["--steered-model", "hf-sae-steer-demo=medical"], "is the base model's own name"),
        (["--steered-model", "x=oncology"],
         "--steered-model x: unknown concept 'oncology'; this server has: medical"),
        (["--steered-model", "x=medical:method=weight,strength=recommended"],
         "--steered-model x: concept 'medical' recommends add, not 'weight'"),
    ],
)  # fmt: skip
def test_bad_serve_arguments_are_one_line(capsys, argv, message):
    code = main(["serve", *argv, "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
