"""Choose the recommended norm fraction on the demo's tuning prompts (never the evaluation's).

    python scripts/tune_norm_fraction.py            # writes storage/demo/tuning.json

The rule, applied to the ``add`` steering of a ``mean_diff`` fit: the largest norm fraction of
1/8, 1/4, 1/2, 1 whose continuations stay under 2x the unsteered perplexity with 95% confidence
(the upper bound of the paired geometric-mean ratio's interval).
``hf_sae_steer.steering.strength.NORM_FRACTION`` records the result; the evaluation
(scripts/run_demo_eval.py) then checks it on held-out prompts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # hf_sae_steer without installing the package

CANDIDATES = (0.125, 0.25, 0.5, 1.0)
MAX_PERPLEXITY_RATIO = 2.0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--demo", type=Path, default=ROOT / "storage" / "demo")
    p.add_argument("--out", type=Path, default=None, help="default: <demo>/tuning.json")
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from hf_sae_steer import FeatureScores, evaluate, load_prompts, load_sae
    from hf_sae_steer.evaluation.conditions import Condition
    from hf_sae_steer.models import load_model

    t0 = time.time()
    model, tok = load_model(str(a.demo / "model"))
    sae = load_sae(a.demo / "sae")
    reference, alignment = a.demo / "reference.txt", a.demo / "alignment.txt"
    scores = FeatureScores.fit(
        model, tok, sae, reference=load_prompts(reference), alignment=load_prompts(alignment),
        rule="mean_diff", progress=False,
    )  # fmt: skip
    result = evaluate(
        model, tok, sae, scores, a.demo / "tune_prompts.txt", alignment, reference=reference,
        conditions=[Condition("orig"), Condition("add", "add", preserve_error=True,
                                                   norm_fractions=CANDIDATES)],
        samples=a.samples, max_new_tokens=a.max_new_tokens, progress=False,
    )  # fmt: skip
    print(result.to_markdown())
    ok = [r["norm_fraction"] for r in result.curve("add")
          if r["perplexity_ratio_hi"] < MAX_PERPLEXITY_RATIO]  # fmt: skip
    chosen = max(ok) if ok else min(CANDIDATES)
    summary = {
        "rule": f"largest norm fraction of {list(CANDIDATES)} whose add steering keeps the "
        f"upper 95% bound of its perplexity ratio to the unsteered model under "
        f"{MAX_PERPLEXITY_RATIO}x on tune_prompts.txt",
        "chosen": chosen,
        "points": [
            {k: r[k] for k in ("norm_fraction", "strength", "perplexity_ratio",
                               "perplexity_ratio_hi", "relevance_centroid_delta",
                               "p_topic_delta")}
            for r in result.curve("add")
        ],  # fmt: skip
        "samples": a.samples,
        "n_prompts": result.config["n_prompts"],
        "seconds": time.time() - t0,
    }
    out = a.out or a.demo / "tuning.json"
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"chosen norm fraction {chosen} -> {out}")


if __name__ == "__main__":
    main()
