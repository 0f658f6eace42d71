"""The commands behind ``hf-sae-steer``: each turns parsed arguments into API calls and prints
the result; no logic of its own."""

from __future__ import annotations

import argparse
import math
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from hf_sae_steer.cli.compare import compare_methods
from hf_sae_steer.cli.demo import run_demo
from hf_sae_steer.cli.highlight import terminal_style
from hf_sae_steer.cli.interactive import cmd_app, cmd_chat, cmd_serve
from hf_sae_steer.cli.settings import MAX_SEED
from hf_sae_steer.data.prompts import load_prompts
from hf_sae_steer.data.sources import open_prompts
from hf_sae_steer.distributed import current_world, launched_size, process_device, shutdown
from hf_sae_steer.evaluation.conditions import BASELINES, CONTROLS
from hf_sae_steer.evaluation.result import EVAL_FILES, is_evaluation
from hf_sae_steer.evaluation.sweep import evaluate
from hf_sae_steer.folders import check_output_folder, check_writable
from hf_sae_steer.models import check_device, load_model
from hf_sae_steer.sae.loading import load_sae
from hf_sae_steer.scores.card import CARD_FILE
from hf_sae_steer.scores.record import ARTIFACT_FILES, is_artifact, load_scores
from hf_sae_steer.scoring.checks import check_calibration, check_options
from hf_sae_steer.scoring.examples import latent_examples
from hf_sae_steer.scoring.fit import FeatureScores
from hf_sae_steer.scoring.rules import DEFAULT_RULE
from hf_sae_steer.steering.names import METHODS

# Commands that share their work between processes under torchrun / accelerate launch.
SHARED = ("score", "eval")


def run(args: argparse.Namespace) -> Any:
    """Run the parsed command; returns what ``--json`` prints (None on ranks other than 0 of a
    multi-process run: only rank 0 prints and writes)."""
    if launched_size() > 1 and args.command not in SHARED:
        raise ValueError(
            f"{args.command} runs in one process; only {' and '.join(SHARED)} share their work "
            "under torchrun / accelerate launch. Run it without a launcher."
        )
    if not 0 <= args.seed <= MAX_SEED:
        raise ValueError(f"--seed must be a whole number from 0 to {MAX_SEED}; got {args.seed}.")
    torch.manual_seed(args.seed)
    args.device = process_device(args.device)  # each process its own GPU under a launcher
    world = current_world(cpu=args.device is not None and args.device.startswith("cpu"))
    args.is_main = world.is_main
    from transformers.utils import logging as hf_logging

    if not args.debug:
        hf_logging.set_verbosity_error()  # our own messages say what matters, once
    if not world.is_main:  # rank 0 speaks for the run; the others report only errors
        warnings.simplefilter("ignore")
    try:
        if not _progress(args):
            hf_logging.disable_progress_bar()
        result = COMMANDS[args.command](args)
    finally:
        shutdown()
    return result if world.is_main else None


def _is_main(args: argparse.Namespace) -> bool:
    """Rank 0 of a multi-process run (or the only process): it writes and prints."""
    return getattr(args, "is_main", True)


def _progress(args: argparse.Namespace) -> bool:
    return not (args.quiet or getattr(args, "json", False)) and _is_main(args)


def _prompts(args: argparse.Namespace) -> list[str]:
    for i, text in enumerate(args.prompt, start=1):
        if not text.strip():
            raise ValueError(f"--prompt number {i} is empty: give it some text.")
    prompts = list(args.prompt)
    if args.prompts:
        prompts += load_prompts(args.prompts)
    if not prompts:
        raise ValueError("No prompts: pass --prompt TEXT (repeatable) or --prompts FILE.")
    return prompts


def _methods(text: str) -> list[str]:
    """Method names; ``recommended`` is the scores' own steering."""
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in (*METHODS, "recommended")]
    if unknown or not methods:
        raise ValueError(
            f"Unknown method {unknown or text!r}; use recommended or one of {', '.join(METHODS)}."
        )
    return methods


def _names(text: str, allowed: tuple[str, ...], flag: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise ValueError(f"{flag}: unknown {unknown}; use some of {', '.join(allowed)}.")
    return names


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
    # Every cheap check before the model loads and the scoring runs.
    rule = args.rule or DEFAULT_RULE
    rule_options = {"objective": args.objective} if args.objective else None
    check_options(rule, summary=args.summary, k=args.k, prior_prompts=args.prior_prompts,
                  norm_fraction=args.norm_fraction, rule_options=rule_options)  # fmt: skip
    check_calibration(not args.no_calibrate, args.target_ratio)
    out = check_output_folder(args.out, ARTIFACT_FILES, overwrite=args.overwrite,
                              is_ours=is_artifact, optional=(CARD_FILE,))  # fmt: skip
    if args.checkpoint is not None:
        _check_checkpoint_place(Path(args.checkpoint), out)
    if args.device is not None:
        check_device(args.device)

    def options(which: str) -> dict[str, Any]:
        return {
            "column": getattr(args, f"{which}_column") or args.column,
            "split": getattr(args, f"{which}_split") or args.split,
            "config": args.config,
        }

    # The reference set is read as a stream (a chunk at a time); the alignment set whole.
    reference = open_prompts(args.reference, **options("reference"), streaming=args.stream)
    alignment = load_prompts(args.alignment, **options("alignment"))
    model, tokenizer = load_model(args.model, device=args.device, dtype=args.dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the report below prints them, once
        scores = FeatureScores.fit(
            model,
            tokenizer,
            load_sae(args.sae),
            layer=args.layer,
            site=args.site,
            reference=reference,
            alignment=alignment,
            rule=rule,
            k=args.k,
            prior_prompts=args.prior_prompts,
            rule_options=rule_options,
            norm_fraction=args.norm_fraction,
            calibrate_strength=not args.no_calibrate,
            target_ratio=args.target_ratio,
            seed=args.seed,
            summary=args.summary,
            embedder=args.embedder,
            batch_size=args.batch_size,
            embed_max_seq_length=args.embed_max_seq_length,
            checkpoint=args.checkpoint,
            checkpoint_every=args.checkpoint_every,
            resume=args.resume,
            progress=_progress(args),
        )
    if not _is_main(args):  # rank 0 writes the artifact and prints; the others are done
        return {}
    scores.model_id = args.model
    path = scores.save_pretrained(args.out, overwrite=args.overwrite)
    if args.push_to_hub:
        scores.push_to_hub(args.push_to_hub)
    if not args.json:
        rec = scores.recommended
        steer = f"{rec['method']} at strength {rec['strength']:.3g}" if rec else "none"
        print(f"Wrote {path} (rule {scores.rule}; recommended steering: {steer})")
        print(scores.report())
        print(_fit_time(scores.options))
    return {
        "path": str(path),
        "rule": scores.rule,
        "recommended": scores.recommended and scores.recommended.to_json(),
        "report": scores.report().to_dict(),
        "effect": None if scores.effect is None else scores.effect.to_dict(),
        **{key: scores.options[key] for key in ("fit_seconds", "calibration_seconds",
                                                "calibration_tokens") if key in scores.options},
    }


def _fit_time(options: dict[str, Any]) -> str:
    """How long the fit took, and its calibration (both as this process measured them)."""
    line = f"Fitted in {options.get('fit_seconds', math.nan):.1f} s"
    if "calibration_seconds" in options:
        line += (f", of which calibrating the strength {options['calibration_seconds']:.1f} s "
                 f"({options['calibration_tokens']:,} LM tokens)")  # fmt: skip
    return line + "."


def _check_checkpoint_place(checkpoint: Path, out: Path) -> None:
    """A checkpoint beside the artifact, never in it, and somewhere we can write."""
    real = Path(os.path.realpath(checkpoint.expanduser()))
    if real == out or out in real.parents:
        raise ValueError(
            f"--checkpoint {checkpoint} is inside --out {out}, which holds only the artifact: put "
            f"the checkpoint beside it (e.g. --checkpoint {out}.ckpt)."
        )
    check_writable(real.parent)


def cmd_generate(args: argparse.Namespace) -> list[dict[str, str]]:
    methods, prompts = _methods(args.methods), _prompts(args)
    sae, scores = load_sae(args.sae), load_scores(args.scores)  # cheap checks before the model
    model, tokenizer = load_model(args.model, device=args.device, dtype=args.dtype)
    rows = compare_methods(
        model,
        tokenizer,
        sae,
        scores,
        prompts,
        [None if m == "recommended" else m for m in methods],
        layer=args.layer,
        site=args.site,
        strength=args.strength,
        preserve_error=args.preserve_error,
        clamp_value=args.clamp_value,
        positions=args.positions,
        direction=args.direction,
        include_base=args.compare,
        **_gen_options(args),
    )
    if not args.json:
        _print_rows(rows, (["base"] if args.compare else []) + methods)
    return rows


def _print_rows(rows: list[dict[str, str]], columns: list[str]) -> None:
    width = max(len(c) for c in columns)
    for row in rows:
        print(f"\n>>> {row['prompt']}")
        for column in columns:
            print(f"  [{column:<{width}}] {row[column]!r}")


def cmd_inspect(args: argparse.Namespace) -> dict[str, Any]:
    sae, scores, prompts = load_sae(args.sae), load_scores(args.scores), load_prompts(args.prompts)
    model, tokenizer = load_model(args.model, device=args.device, dtype=args.dtype)
    top = scores.top_latents(args.top).tolist()
    examples = latent_examples(
        model,
        tokenizer,
        sae,
        prompts,
        top,
        layer=args.layer,
        site=args.site,
        scores=scores,
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
    result = run_demo(
        args.assets,
        model=args.model,
        sae=args.sae,
        scores=args.scores,
        reference_scores=args.reference_scores,
        prompts=args.prompts,
        alignment=args.alignment,
        reference=args.reference,
        n_prompts=args.n_prompts,
        samples=args.samples,
        shown_samples=args.show_samples,
        repetition_penalty=args.repetition_penalty,
        no_repeat_ngram_size=args.no_repeat_ngram_size,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        dtype=args.dtype,
        progress=_progress(args),
    )
    if not args.json:
        print(result.text(terminal_style()))
    return result.to_dict()


def cmd_eval(args: argparse.Namespace) -> dict[str, Any]:
    strengths = _floats(args.strengths, "--strengths")
    rhos = _floats(args.norm_fractions, "--norm-fractions")
    preserve = {"both": (False, True), "on": (True,), "off": (False,)}[args.preserve_error]
    methods = tuple(m for m in _methods(args.methods) if m != "recommended")
    baselines = _names(args.baselines, BASELINES, "--baselines")
    controls = _names(args.controls, CONTROLS, "--controls")
    try:
        import matplotlib  # noqa: F401 - fail now, not after the whole sweep
    except ImportError:
        raise ImportError(
            "hf-sae-steer eval draws a plot, which needs matplotlib: "
            "pip install 'hf_sae_steer[eval]'"
        ) from None
    check_output_folder(args.out, EVAL_FILES, overwrite=args.overwrite, is_ours=is_evaluation)

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
        reference=args.reference,
        methods=methods,
        norm_fractions=rhos,
        baselines=baselines,
        controls=controls,
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
    if not _is_main(args):
        return {}
    files = result.save(args.out, overwrite=args.overwrite)
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
    "chat": cmd_chat,
    "app": cmd_app,
    "serve": cmd_serve,
}
