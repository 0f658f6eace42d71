"""``hf-sae-steer``: argument parsing and printing only; every action is one API call."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

EXIT_BAD_INPUT = 2
EXIT_FAILURE = 1
# What bad input raises; anything else is a failure of ours (exit 1, still one line).
BAD_INPUT = (ValueError, TypeError, KeyError, OSError, ImportError)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", help="torch device, e.g. cpu or cuda (default: cpu)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="model dtype")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
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


def _generation(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=positive_int, default=32)
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--batch-size", type=positive_int, default=8)


def _steering(p: argparse.ArgumentParser, several: bool) -> None:
    if several:
        p.add_argument("--methods", default="swap", help="comma-separated, e.g. swap,clamp")
    else:
        p.add_argument("--method", default="swap", help="orig, sae, clamp, weight or swap")
    p.add_argument("--strength", type=float, default=1.0)
    p.add_argument("--preserve-error", action="store_true", help="keep the SAE's error term")


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
    p.add_argument("--summary", default="avg", choices=["avg", "max", "counts"])
    p.add_argument("--embedder", default="sentence-transformers/all-MiniLM-L6-v2")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--out", required=True, help="folder to write the score artifact to")
    p.add_argument("--push-to-hub", metavar="REPO", help="also upload the artifact")
    _common(p)

    p = sub.add_parser("generate", help="generate steered text")
    _model_sae(p)
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    p.add_argument("--prompts", help="file of prompts (txt/csv/json/jsonl/parquet)")
    p.add_argument("--compare", action="store_true", help="print base and steered side by side")
    p.add_argument("--positions", default="all", choices=["all", "prompt", "generated"])
    _steering(p, several=True)
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
    p.add_argument("--assets", help="demo asset folder (default: storage/demo)")
    p.add_argument("--model")
    p.add_argument("--sae")
    p.add_argument("--scores")
    p.add_argument("--prompts", help="prompts file (default: the demo's)")
    p.add_argument("--alignment", help="alignment set, for the relevance line")
    p.add_argument("--n-prompts", type=positive_int, default=6)
    _steering(p, several=True)
    _generation(p)
    _common(p)

    p = sub.add_parser("eval", help="relevance vs fluency across methods and strengths")
    _model_sae(p)
    p.add_argument("--prompts", required=True, help="held-out prompts")
    p.add_argument("--alignment", required=True, help="the alignment set")
    p.add_argument("--methods", default="orig,sae,clamp,weight,swap")
    p.add_argument("--strengths", default="0.5,1,2")
    p.add_argument("--preserve-error", default="both", choices=["both", "on", "off"])
    p.add_argument("--samples", type=positive_int, default=3)
    p.add_argument("--max-new-tokens", type=positive_int, default=24)
    p.add_argument("--n-prompts", type=positive_int, help="use only the first N prompts")
    p.add_argument("--embedder", help="sentence embedder (default: the one the scores used)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--out", required=True, help="folder for table.md/csv, samples, plot.png")
    _common(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import torch

        torch.manual_seed(args.seed)
        if not _progress(args):
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        result = COMMANDS[args.command](args)
    except KeyboardInterrupt:
        return 130
    except Exception as error:  # noqa: BLE001 - one line for users; --debug shows the rest
        if args.debug or os.environ.get("HF_SAE_STEER_DEBUG"):
            raise
        bad_input = isinstance(error, BAD_INPUT)
        kind = "error" if bad_input else f"internal error ({type(error).__name__}; --debug)"
        print(f"hf-sae-steer {args.command}: {kind}: {_one_line(error)}", file=sys.stderr)
        return EXIT_BAD_INPUT if bad_input else EXIT_FAILURE
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    return 0


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _progress(args: argparse.Namespace) -> bool:
    return not (args.quiet or args.json)


def _prompts(args: argparse.Namespace) -> list[str]:
    from hf_sae_steer.data import load_prompts

    prompts = list(args.prompt)
    if args.prompts:
        prompts += load_prompts(args.prompts)
    if not prompts:
        raise ValueError("No prompts: pass --prompt TEXT (repeatable) or --prompts FILE.")
    return prompts


def _methods(text: str) -> list[str]:
    from hf_sae_steer.interventions import METHODS

    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"Unknown method {unknown or text!r}; use one of {', '.join(METHODS)}.")
    return methods


def _floats(text: str, flag: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values:
        raise ValueError(f"{flag} must be comma-separated numbers, e.g. 0.5,1,2; got {text!r}.")
    return values


def _gen_options(args: argparse.Namespace) -> dict[str, Any]:
    return dict(
        max_new_tokens=args.max_new_tokens,
        do_sample=args.sample,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        batch_size=args.batch_size,
        progress=_progress(args),
    )


def cmd_score(args: argparse.Namespace) -> dict[str, Any]:
    from hf_sae_steer import FeatureScores, load_prompts, load_sae
    from hf_sae_steer.recipes import load_model

    model, tokenizer = load_model(args.model, device=args.device, dtype=args.dtype)
    reference, alignment = (
        load_prompts(
            getattr(args, which),
            column=getattr(args, f"{which}_column") or args.column,
            split=getattr(args, f"{which}_split") or args.split,
            config=args.config,
        )
        for which in ("reference", "alignment")
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the report below prints them, once
        scores = FeatureScores.fit(
            model,
            tokenizer,
            load_sae(args.sae),
            args.layer,
            args.site,
            reference=reference,
            alignment=alignment,
            summary=args.summary,
            embedder=args.embedder,
            batch_size=args.batch_size,
            embed_max_seq_length=args.embed_max_seq_length,
            progress=_progress(args),
        )
    scores.model_id = args.model
    path = scores.save_pretrained(args.out)
    if args.push_to_hub:
        scores.push_to_hub(args.push_to_hub)
    if not args.json:
        print(f"Wrote {path}\n{scores.report()}")
    return {"path": str(path), "report": scores.report().to_dict()}


def cmd_generate(args: argparse.Namespace) -> list[dict[str, str]]:
    from hf_sae_steer import load_sae
    from hf_sae_steer.recipes import compare_methods, load_model, load_scores

    methods, prompts = _methods(args.methods), _prompts(args)
    sae, scores = load_sae(args.sae), load_scores(args.scores)  # cheap checks before the model
    model, tokenizer = load_model(args.model, device=args.device, dtype=args.dtype)
    rows = compare_methods(
        model,
        tokenizer,
        sae,
        scores,
        prompts,
        methods,
        layer=args.layer,
        site=args.site,
        strength=args.strength,
        preserve_error=args.preserve_error,
        positions=args.positions,
        include_base=args.compare,
        **_gen_options(args),
    )
    if not args.json:
        _print_rows(rows, methods, show_base=args.compare)
    return rows


def _print_rows(rows: list[dict[str, str]], methods: list[str], show_base: bool) -> None:
    for row in rows:
        print(f"\n>>> {row['prompt']}")
        if show_base:
            print(f"  [base ] {row['base']!r}")
        for method in methods:
            print(f"  [{method:<5}] {row[method]!r}")


def cmd_inspect(args: argparse.Namespace) -> dict[str, Any]:
    from hf_sae_steer import load_prompts, load_sae
    from hf_sae_steer.recipes import latent_examples, load_model, load_scores

    sae, scores, prompts = load_sae(args.sae), load_scores(args.scores), load_prompts(args.prompts)
    model, tokenizer = load_model(args.model, device=args.device, dtype=args.dtype)
    top = scores.top_latents(args.top).tolist()
    examples = latent_examples(
        model,
        tokenizer,
        sae,
        prompts,
        top,
        layer=args.layer if args.layer is not None else scores.layer,
        site=args.site or scores.site,
        per_latent=args.examples,
        batch_size=args.batch_size,
        progress=_progress(args),
    )
    report = scores.report()
    if not args.json:
        for latent in top:
            print(f"\nlatent {latent}  score {float(scores.scores[latent]):.4f}")
            for ex in examples[latent] or []:
                print(f"  {ex.activation:8.3f}  token {ex.token!r} in: {ex.prompt[:90]!r}")
            if not examples[latent]:
                print("  (never fires on these prompts)")
        print(f"\n{report}")
    return {
        "latents": [
            {
                "latent": i,
                "score": float(scores.scores[i]),
                "examples": [vars(ex) for ex in examples[i]],
            }
            for i in top
        ],
        "report": report.to_dict(),
    }


def cmd_demo(args: argparse.Namespace) -> dict[str, Any]:
    from hf_sae_steer.demo import run_demo

    methods = _methods(args.methods)
    result = run_demo(
        args.assets,
        model=args.model,
        sae=args.sae,
        scores=args.scores,
        prompts=args.prompts,
        alignment=args.alignment,
        methods=methods,
        strength=args.strength,
        preserve_error=args.preserve_error,
        n_prompts=args.n_prompts,
        max_new_tokens=args.max_new_tokens,
        do_sample=args.sample,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        dtype=args.dtype,
        progress=_progress(args),
    )
    if not args.json:
        print(f"model {result.setup['model']}  sae {result.setup['sae']}")
        _print_rows(result.rows, methods, show_base=True)
        if result.report is not None:
            print(f"\n{result.report}")
        print(f"\n{result.relevance_line()}")
    return result.to_dict()


def cmd_eval(args: argparse.Namespace) -> dict[str, Any]:
    from hf_sae_steer import load_prompts, load_sae
    from hf_sae_steer.evaluation import evaluate
    from hf_sae_steer.recipes import load_model, load_scores

    strengths = _floats(args.strengths, "--strengths")
    preserve = {"both": (False, True), "on": (True,), "off": (False,)}[args.preserve_error]
    methods = tuple(_methods(args.methods))
    import matplotlib  # noqa: F401 - fail now, not after the whole sweep, if plotting can't work

    prompts, alignment = load_prompts(args.prompts)[: args.n_prompts], load_prompts(args.alignment)
    sae, scores = load_sae(args.sae), load_scores(args.scores)  # cheap checks before the model
    model, tokenizer = load_model(args.model, device=args.device, dtype=args.dtype)
    result = evaluate(
        model,
        tokenizer,
        sae,
        scores,
        prompts,
        alignment,
        methods=methods,
        embedder=args.embedder,
        temperature=args.temperature,
        top_k=args.top_k,
        batch_size=args.batch_size,
        preserve_error=preserve,
        strengths=strengths,
        samples=args.samples,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        layer=args.layer,
        site=args.site,
        progress=_progress(args),
    )
    files = result.save(args.out)
    if not args.json:
        print(result.to_markdown())
        print(f"\nWrote {', '.join(str(path) for path in files.values())}")
    return {"files": {name: str(path) for name, path in files.items()}, "rows": result.rows}


COMMANDS = {
    "score": cmd_score,
    "generate": cmd_generate,
    "inspect": cmd_inspect,
    "demo": cmd_demo,
    "eval": cmd_eval,
}


if __name__ == "__main__":
    raise SystemExit(main())
