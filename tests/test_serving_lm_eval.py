"""lm-evaluation-harness against ``hf-sae-steer serve``, as a steering user measures what a
steering costs: ``local-completions`` (a multiple-choice task, scored by loglikelihood through
``echo`` + ``logprobs``, and a generate_until task, ``--batch_size 4``: lists of token-id
prompts) and ``local-chat-completions``, on the base model and on a steered model name
(``--steered-model medical-demo=medical``). Tasks are small local jsonl files with their task
YAML written here. Every loglikelihood equals the demo model's own (its forward pass here, or
SteeredModel's), and steering moves them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi", reason="hf-sae-steer serve needs the [serve] extra")
lm_eval = pytest.importorskip(
    "lm_eval", reason="lm-evaluation-harness is not installed: pip install 'lm-eval[api]'"
)
pytest.importorskip("tenacity", reason="lm-eval's API models need its [api] extra")

from test_serving_app import free_port, wait_healthy  # noqa: E402

from hf_sae_steer.models import load_model  # noqa: E402
from hf_sae_steer.sae.loading import load_sae  # noqa: E402
from hf_sae_steer.scores.record import load_scores  # noqa: E402
from hf_sae_steer.steering.steered import SteeredModel  # noqa: E402

DEMO = Path(__file__).resolve().parents[1] / "storage" / "demo"
BASE, STEERED = "hf-sae-steer-demo", "medical-demo"
QUESTIONS = [
    ("The doctor examined the", [" patient", " river", " bridge"], 0),
    ("The river flows through the", [" valley", " hospital", " fever"], 0),
    ("Antibiotics are used to treat", [" infections", " bridges", " wheat"], 0),
    ("The farmer planted", [" wheat", " symptoms", " steel"], 0),
    ("Engineers built a bridge of", [" steel", " fever", " cough"], 0),
    ("Symptoms of the infection include", [" pain", " barley", " steel"], 0),
]
PROMPTS = ["The patient was treated for a", "A doctor examined the", "The river flows through",
           "Engineers built a", "The orchestra played a"]  # fmt: skip
NEW = 8


def _task(folder: Path, name: str, rows: list[dict], body: str) -> None:
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {data}\n  cache_dir: {folder / 'cache'}\ntest_split: test\n{body}"
    )


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lm_eval_tasks")
    mc = [{"q": q, "choices": c, "answer": a} for q, c, a in QUESTIONS]
    _task(folder, "steer_mc", mc,
          'output_type: multiple_choice\ndoc_to_text: "{{q}}"\ndoc_to_choice: "{{choices}}"\n'
          'doc_to_target: "{{answer}}"\ntarget_delimiter: ""\n'
          "metric_list:\n  - metric: acc\n")  # fmt: skip
    _task(folder, "steer_gen", [{"prompt": p} for p in PROMPTS],
          'output_type: generate_until\ndoc_to_text: "{{prompt}}"\ndoc_to_target: ""\n'
          f'generation_kwargs:\n  until: ["."]\n  max_gen_toks: {NEW}\n  do_sample: false\n'
          "metric_list:\n  - metric: exact_match\n")  # fmt: skip
    return folder


@pytest.fixture(scope="module")
def server():
    port = free_port()
    cmd = [sys.executable, "-m", "hf_sae_steer", "serve", "--port", str(port), "--quiet",
           "--concept", f"medical={DEMO / 'scores'}",
           "--steered-model", f"{STEERED}=medical"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_healthy(url[:-3], proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture(scope="module")
def demo():
    model, tokenizer = load_model(str(DEMO / "model"))
    return model, tokenizer, load_sae(str(DEMO / "sae")), load_scores(DEMO / "scores")


def _run_model(demo, steered: bool, fn):
    model, _, sae, artifact = demo
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if not steered:
            return fn(model)
        with SteeredModel(model, sae, scores=artifact) as steered_model:
            return fn(steered_model)


def reference_loglikelihood(demo, context: str, continuation: str, steered: bool):
    """lm-eval's split (the context's tokens, then the rest of the whole's) scored by one
    forward pass: the sum of the continuation's log-probabilities and whether each was the
    argmax."""
    tokenizer = demo[1]
    ctx = tokenizer(context)["input_ids"]
    whole = tokenizer(context + continuation)["input_ids"]
    logits = _run_model(demo, steered, lambda m: m(torch.tensor([whole])).logits)
    logprobs = logits[0].float().log_softmax(-1)
    scored = [(logprobs[i - 1], whole[i]) for i in range(len(ctx), len(whole))]
    return sum(float(row[t]) for row, t in scored), all(int(row.argmax()) == t for row, t in scored)


def reference_generation(demo, prompt: str, steered: bool) -> str:
    tokenizer = demo[1]
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    kw = {"attention_mask": torch.ones_like(ids), "max_new_tokens": NEW, "do_sample": False}
    out = _run_model(demo, steered, lambda m: m.generate(ids, **kw))
    text = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    return text.split(".")[0]


def evaluate(kind: str, url: str, model: str, tasks: Path, names: list[str], **kw):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    endpoint = "chat/completions" if kind == "local-chat-completions" else "completions"
    args = f"model={model},base_url={url}/{endpoint},max_length=128,max_retries=1"
    if kind == "local-completions":
        args += f",tokenizer={DEMO / 'model'},tokenizer_backend=huggingface"
    # include_defaults=False: indexing lm-eval's thousands of built-in tasks takes ~30 s here
    results = simple_evaluate(
        model=kind, model_args=args, tasks=names, batch_size=4, log_samples=True,
        task_manager=TaskManager(include_path=str(tasks), include_defaults=False), **kw,
    )  # fmt: skip
    return results["samples"]


def _arguments(sample) -> list[tuple]:
    args = sample["arguments"]
    if isinstance(args, dict):  # the serialized form
        return [tuple(a.values()) for a in args.values()]
    return [tuple(a) for a in args]


def test_lm_eval_completions_scores_base_and_steered_models_as_the_model_does(server, tasks,
                                                                               demo):  # fmt: skip
    scores = {}
    for model, steered in ((BASE, False), (STEERED, True)):
        samples = evaluate("local-completions", server, model, tasks, ["steer_mc", "steer_gen"])
        got = []
        for sample in samples["steer_mc"]:
            for (context, continuation), resp in zip(_arguments(sample), sample["resps"],
                                                     strict=True):  # fmt: skip
                loglikelihood, greedy = resp[0]
                want, want_greedy = reference_loglikelihood(demo, context, continuation, steered)
                assert float(loglikelihood) == pytest.approx(want, abs=1e-3)
                assert str(greedy) == str(want_greedy)
                got.append(float(loglikelihood))
        scores[model] = got
        assert len(got) == sum(len(c) for _, c, _ in QUESTIONS)
        for sample in samples["steer_gen"]:
            ((prompt, _),) = _arguments(sample)
            assert sample["resps"][0][0] == reference_generation(demo, prompt, steered)
    moved = [abs(a - b) > 1e-3 for a, b in zip(scores[BASE], scores[STEERED], strict=True)]
    assert all(moved)  # steering changes every loglikelihood


def test_lm_eval_chat_completions_on_a_steered_model_name(server, tasks, demo):
    samples = evaluate("local-chat-completions", server, STEERED, tasks, ["steer_gen"],
                       apply_chat_template=True)  # fmt: skip
    for sample in samples["steer_gen"]:
        ((messages, _),) = _arguments(sample)
        if isinstance(messages, tuple):  # lm-eval's JsonChatStr, as its samples keep it
            (messages,) = messages
        (message,) = json.loads(messages)
        prompt = f"user: {message['content']}\nassistant:"  # the server's plain chat fallback
        assert sample["resps"][0][0] == reference_generation(demo, prompt, steered=True)
    assert len(samples["steer_gen"]) == len(PROMPTS)
