"""``hf-sae-steer``: the argument parser and the entry point.

Parsing needs no torch, so ``--help`` is instant; the commands (:mod:`.commands`) import the
library when they run."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

EXIT_BAD_INPUT = 2
EXIT_FAILURE = 1
# What bad input raises; anything else (TypeError, KeyError, IndexError, ...) is a failure of
# ours: exit 1, still one line, and --debug shows the traceback.
BAD_INPUT = (ValueError, OSError, ImportError)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _common(p: argparse.ArgumentParser, json: bool = True) -> None:
    p.add_argument("--device", help="torch device, e.g. cpu or cuda (default: cpu)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="model dtype")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    if json:
        p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")


def _model_sae(p: argparse.ArgumentParser, scores: bool = True) -> None:
    p.add_argument("--model", required=True, help="HF model id or local folder")
    p.add_argument("--sae", required=True, help="SAE spec: openai:..., hf://..., a .pt or folder")
    p.add_argument("--layer", type=int, help="block index (default: from the SAE / scores)")
    p.add_argument("--site", help="resid_pre, resid_mid, resid_post, attn_out or mlp_out")
    if scores:
        p.add_argument("--scores", required=True, help="score folder, Hub repo id, or CSV")


def _generation(p: argparse.ArgumentParser, batch: bool = True) -> None:
    p.add_argument("--max-new-tokens", type=positive_int, default=32)
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--top-p", type=float, default=1.0)
    if batch:
        p.add_argument("--batch-size", type=positive_int, default=8)


def _repetition(p: argparse.ArgumentParser, penalty: float = 1.0, ngram: int = 0) -> None:
    p.add_argument("--repetition-penalty", type=float, default=penalty,
                   help=f"above 1 lowers tokens already in the text (default {penalty:g})")
    p.add_argument("--no-repeat-ngram-size", type=int, default=ngram, metavar="N",
                   help=f"never repeat any N tokens (0: off; default {ngram})")  # fmt: skip


METHOD_HELP = (
    "recommended (the scores' own steering), add, vector, clamp, swap, weight, sae or orig"
)


def _steering(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--methods", default="recommended", help=f"comma-separated, of: {METHOD_HELP}"
    )
    p.add_argument(
        "--strength", type=float, help="default: the recommended one, or calibrated, or 1"
    )
    p.add_argument(
        "--preserve-error",
        action=argparse.BooleanOptionalAction,
        help="keep the SAE's error term (default: as recommended; on for add)",
    )
    p.add_argument("--clamp-value", type=float, help="clamp: add this (default: calibrated)")


def _playground(p: argparse.ArgumentParser) -> None:
    """chat and app: generate's setup and steering options, all optional (the shipped demo)."""
    p.add_argument("--assets", help="demo asset folder (default: the shipped demo)")
    p.add_argument("--model", help="HF model id or local folder (default: the demo's)")
    p.add_argument("--sae", help="SAE spec: openai:..., hf://..., a .pt or folder")
    p.add_argument("--scores", help="score folder, Hub repo id, or CSV")
    p.add_argument("--layer", type=int, help="block index (default: from the SAE / scores)")
    p.add_argument("--site", help="resid_pre, resid_mid, resid_post, attn_out or mlp_out")
    p.add_argument(
        "--compare-model", help="a second model (e.g. a fine-tuned one) shown beside them"
    )
    p.add_argument(
        "--latent-prompts",
        help="prompts searched for the tokens that fire the top latents (demo: its reference set)",
    )
    p.add_argument(
        "--reference",
        help="reference prompts a topic of your own is fitted against (default: --latent-prompts)",
    )
    p.add_argument(
        "--reference-scores",
        help="the reference rule's scores, which swap steers with (demo: its scores_seed)",
    )
    p.add_argument("--method", default="recommended", help=f"one of: {METHOD_HELP}")
    p.add_argument("--positions", default="all", choices=["all", "prompt", "generated"])
    p.add_argument("--direction", default="toward", choices=["toward", "away"],
                   help="steer towards the topic or away from it (default: toward)")  # fmt: skip
    p.add_argument("--strength", type=float, help="default: the method's (or the scores')")
    p.add_argument(
        "--preserve-error",
        action=argparse.BooleanOptionalAction,
        help="keep the SAE's error term (default: as recommended; on for add)",
    )
    p.add_argument("--clamp-value", type=float, help="clamp: add this (default: calibrated)")
    _generation(p, batch=False)
    _common(p, json=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-sae-steer", description="Steer Hugging Face causal LMs with sparse autoencoders."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("score", help="score SAE latents against an alignment set")
    _model_sae(p, scores=False)
    p.add_argument("--reference", required=True, help="reference prompts (file or dataset id)")
    p.add_argument("--alignment", required=True, help="alignment prompts (file or dataset id)")
    p.add_argument("--column", help="text column of both prompt sources")
    p.add_argument("--split", help="split of both prompt sources, e.g. train[:20]")
    p.add_argument("--config", help="dataset config of both prompt sources (Hub datasets)")
    for which in ("reference", "alignment"):
        p.add_argument(f"--{which}-column", help=f"text column of the {which} set")
        p.add_argument(f"--{which}-split", help=f"split of the {which} set")
    p.add_argument(
        "--embed-max-seq-length",
        type=positive_int,
        help="embedder truncation in tokens (MiniLM: 256 by default; the reference used 512)",
    )
    p.add_argument(
        "--rule",
        default=None,
        choices=["mean_diff", "output", "trained", "support", "seed"],  # scoring.selection.RULES
        help="selection rule (seed: the reference's, exactly; default: the library's default)",
    )
    p.add_argument("--k", type=positive_int, help="mean_diff, output: latents to choose")
    p.add_argument("--objective", choices=["preference", "lm_kl"],
                   help="trained: the objective (default preference)")  # fmt: skip
    p.add_argument("--target-ratio", type=float, default=None,
                   help="calibrate the recommended strength to this perplexity ratio "
                        "(default 1.5)")  # fmt: skip
    p.add_argument("--no-calibrate", action="store_true",
                   help="set the recommended strength by --norm-fraction, not calibrated")
    p.add_argument("--prior-prompts", type=float, help="support: shrinkage (default 5)")
    p.add_argument(
        "--norm-fraction",
        type=float,
        default=0.5,
        help="strength of the recommended steering, as a fraction of the hidden-state norm",
    )
    p.add_argument("--summary", default="avg", choices=["avg", "max", "counts"])
    p.add_argument("--embedder", default="sentence-transformers/all-MiniLM-L6-v2")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument(
        "--stream",
        action="store_true",
        help="read a Hub dataset reference set with streaming=True (local files always stream)",
    )
    p.add_argument("--checkpoint", metavar="PATH", help="file to save the partial sums to")
    p.add_argument(
        "--checkpoint-every",
        type=positive_int,
        metavar="N",
        help="save the sums every N reference prompts (default 1024; needs --checkpoint)",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue the run saved in --checkpoint, if any"
    )
    p.add_argument("--out", required=True, help="folder to write the score artifact to")
    p.add_argument(
        "--overwrite", action="store_true", help="write into a folder holding other files"
    )
    p.add_argument("--push-to-hub", metavar="REPO", help="also upload the artifact")
    _common(p)

    p = sub.add_parser("generate", help="generate steered text")
    _model_sae(p)
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    p.add_argument("--prompts", help="file of prompts (txt/csv/json/jsonl/parquet)")
    p.add_argument("--compare", action="store_true", help="print base and steered side by side")
    p.add_argument("--positions", default="all", choices=["all", "prompt", "generated"])
    p.add_argument("--direction", default="toward", choices=["toward", "away"],
                   help="steer towards the topic or away from it (default: toward)")  # fmt: skip
    _steering(p)
    _generation(p)
    _common(p)

    p = sub.add_parser("inspect", help="top latents, what fires them, the uncertainty report")
    _model_sae(p)
    p.add_argument("--prompts", required=True, help="prompts to search (e.g. the reference set)")
    p.add_argument("--top", type=positive_int, default=10, help="how many latents")
    p.add_argument("--examples", type=positive_int, default=3, help="examples per latent")
    p.add_argument("--batch-size", type=positive_int, default=16)
    _common(p)

    p = sub.add_parser("demo", help="base vs steered on the shipped demo (offline) or your setup")
    p.add_argument("--assets", help="demo asset folder (default: the shipped demo)")
    p.add_argument("--model")
    p.add_argument("--sae")
    p.add_argument("--scores", help="score artifact (its recommended steering is shown)")
    p.add_argument("--reference-scores", help="reference-rule scores, to show swap beside it")
    p.add_argument("--prompts", help="prompts file (default: the demo's)")
    p.add_argument("--alignment", help="alignment set, for the measured gain")
    p.add_argument("--reference", help="reference set, for the topic classifier")
    p.add_argument("--n-prompts", type=positive_int, default=6, help="prompts shown")
    p.add_argument("--samples", type=positive_int, default=3, help="samples per measured prompt")
    p.add_argument("--show-samples", type=positive_int, default=3,
                   help="sampled continuations shown per prompt (default 3)")  # fmt: skip
    _repetition(p, penalty=1.3, ngram=3)
    p.add_argument("--max-new-tokens", type=positive_int, default=24)
    p.add_argument("--batch-size", type=positive_int, default=16)
    _common(p)

    p = sub.add_parser("eval", help="relevance vs fluency across methods and strengths")
    _model_sae(p)
    p.add_argument("--prompts", required=True, help="held-out prompts")
    p.add_argument("--alignment", required=True, help="the alignment set")
    p.add_argument("--reference", help="reference texts: train the topic classifier on them")
    p.add_argument("--methods", default="add,vector,swap", help=f"of: {METHOD_HELP}")
    p.add_argument("--strengths", default="0.5,1,2", help="for the non-additive methods")
    p.add_argument("--norm-fractions", default="0.125,0.25,0.5,1", help="for add and vector")
    p.add_argument("--preserve-error", default="both", choices=["both", "on", "off"])
    p.add_argument("--baselines", default="", help="comma-separated: prefix, finetune")
    p.add_argument("--controls", default="", help="comma-separated: random_latents, random_vector")
    p.add_argument("--samples", type=positive_int, default=3)
    p.add_argument("--max-new-tokens", type=positive_int, default=24)
    p.add_argument("--n-prompts", type=positive_int, help="use only the first N prompts")
    p.add_argument("--embedder", help="sentence embedder (default: the one the scores used)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--out", required=True, help="folder for table.md/csv, samples, plot.png")
    p.add_argument(
        "--overwrite", action="store_true", help="write into a folder holding other files"
    )
    _common(p)

    p = sub.add_parser("chat", help="a prompt loop in the terminal: base vs steered, with times")
    _playground(p)

    p = sub.add_parser("app", help="the playground as a local web app (needs the [app] extra)")
    _playground(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=positive_int, default=7860, help="port (default 7860)")
    p.add_argument("--share", action="store_true", help="also open a public Gradio share link")

    p = sub.add_parser(
        "serve", help="an OpenAI-compatible server with per-request steering (the [serve] extra)"
    )
    p.add_argument("--model", help="HF model id or local folder (default: the demo's)")
    p.add_argument(
        "--sae", action="append", default=[], help="SAE spec (repeatable; needed with --model)"
    )
    p.add_argument(
        "--concept", action="append", default=[], metavar="NAME=PATH_OR_HUB_ID",
        help="a named score artifact (repeatable; demo default: medical=<demo scores>)",
    )  # fmt: skip
    p.add_argument("--concepts-dir", help="a folder of score artifact folders, named by folder")
    p.add_argument("--assets", help="demo asset folder (default: the shipped demo)")
    p.add_argument("--engine", default="transformers", help="transformers (default) or vllm")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=positive_int, default=8000, help="port (default 8000)")
    p.add_argument(
        "--api-key", help="clients must send Authorization: Bearer KEY (/health stays open; "
        "default: $HF_SAE_STEER_API_KEY, else none)",
    )  # fmt: skip
    p.add_argument(
        "--allowed-origins", nargs="+", default=[], metavar="ORIGIN",
        help="web pages (scheme://host[:port], or *) allowed to call the server (CORS; default "
        "none)",
    )  # fmt: skip
    p.add_argument(
        "--allowed-hosts", nargs="+", default=[], metavar="HOST",
        help="extra names the Host header may carry (default: IP addresses, localhost, the bind "
        "address; * for any)",
    )  # fmt: skip
    p.add_argument(
        "--shutdown-grace", type=float, default=30.0, metavar="SECONDS",
        help="on SIGTERM/Ctrl-C, how long running requests may finish before they get 503 "
        "(default 30)",
    )  # fmt: skip
    p.add_argument("--served-model-name", help="the model id clients send (default: --model)")
    p.add_argument(
        "--steered-model", action="append", default=[], metavar="NAME=CONCEPT[:OPTIONS]",
        help="serve a steering as its own model id (repeatable), e.g. medical-demo=medical or "
        "no-medical=medical:direction=away; OPTIONS: strength, method, positions, direction, "
        "preserve_error as key=value,...",
    )  # fmt: skip
    p.add_argument("--max-batch", type=positive_int, default=32, help="rows decoded together")
    p.add_argument(
        "--max-waiting", type=positive_int, default=64, help="queued requests before 429"
    )
    p.add_argument("--max-context", type=positive_int, help="cap the model's context (tokens)")
    p.add_argument(
        "--tensor-parallel-size", type=positive_int, default=1,
        help="--engine vllm: GPUs the model is split across (default 1)",
    )  # fmt: skip
    p.add_argument(
        "--max-prompt-chars", type=positive_int, default=32_000,
        help="longest prompt in characters, checked before tokenizing (default 32000)",
    )  # fmt: skip
    _common(p, json=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from hf_sae_steer.cli import commands

        result = commands.run(args)
    except KeyboardInterrupt:
        checkpoint = getattr(args, "checkpoint", None)
        if checkpoint and os.path.isfile(checkpoint):
            print(f"hf-sae-steer {args.command}{_rank()}: interrupted; the work so far is in "
                  f"{checkpoint}: run the same command with --resume to go on from there.",
                  file=sys.stderr)  # fmt: skip
        return 130
    except Exception as error:  # noqa: BLE001 - one line for users; --debug shows the rest
        if args.debug or os.environ.get("HF_SAE_STEER_DEBUG"):
            raise
        bad_input = isinstance(error, BAD_INPUT)
        kind = "error" if bad_input else f"internal error ({type(error).__name__}; --debug)"
        print(f"hf-sae-steer {args.command}{_rank()}: {kind}: {_one_line(error)}", file=sys.stderr)
        return EXIT_BAD_INPUT if bad_input else EXIT_FAILURE
    if getattr(args, "json", False) and result is not None:  # None: not rank 0 of several
        print(json.dumps(result, indent=2, default=str))
    return 0


def _rank() -> str:
    """`` [rank 1]`` under a launcher that started several processes, else nothing."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        return f" [rank {os.environ.get('RANK', '?')}]"
    return ""


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


if __name__ == "__main__":
    raise SystemExit(main())
