"""Measure each topic's cross-source judge (``hf_sae_steer.evaluation.judges``) and record its AUCs
in ``storage/topics/judges.json``.

    python scripts/judge_auc.py            # after scripts/build_judges.py

Per topic: the cross-validated AUC on the judge's fit texts, the AUC on its held-out GCIDE
texts, and the *transfer* AUC on the benchmark's own WordNet texts (the topic's ``eval.txt``
against the benchmark negatives of other files), a source and style the judge never saw.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--topics", type=Path, default=ROOT / "storage" / "topics")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-write", action="store_true", help="print only")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from hf_sae_steer.data.embedders import load_embedder
    from hf_sae_steer.evaluation.judges import CachedEmbedder, build_judge, load_judge_texts
    from hf_sae_steer.evaluation.topics import load_topics

    model, name = load_embedder("sentence-transformers/all-MiniLM-L6-v2", None)
    embedder = CachedEmbedder(model)  # the negatives are shared by every topic's judge
    index = a.topics / "judges.json"
    record = json.loads(index.read_text(encoding="utf-8"))
    rows = {r["name"]: r for r in record["judges"]}
    print(f"{'topic':14s} {'cv AUC':>7s} {'held-out AUC':>12s} {'transfer AUC':>12s}")
    for topic in load_topics(a.topics):
        t0 = time.time()
        judge = build_judge(
            embedder, load_judge_texts(a.topics, topic.name),
            transfer=(topic.eval, topic.negatives),
        )  # fmt: skip
        rows[topic.name]["auc"] = {
            "cv": round(judge.cv_auc, 4),
            "heldout": round(judge.heldout_auc, 4),
            "transfer": round(judge.transfer_auc, 4),
            "embedder": name,
        }
        print(f"{topic.name:14s} {judge.cv_auc:7.3f} {judge.heldout_auc:12.3f} "
              f"{judge.transfer_auc:12.3f}   ({time.time() - t0:.0f} s)", flush=True)  # fmt: skip
    if not a.no_write:
        index.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
