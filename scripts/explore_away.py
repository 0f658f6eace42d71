"""Which suppression steers the demo model *away* from a topic? A bounded research run (issue 21).

    python scripts/explore_away.py --topics medical --plan diagnose  # where chosen latents fire
    python scripts/explore_away.py --topics medical --plan rank      # which latents, how many
    python scripts/explore_away.py --topics medical --plan compare --sets actdiff:10,actdiff:20 \
        --posts actdiff:50:0,odds:100:0 --n-inviting 48 --n-neutral 56   # every method, matched
    python scripts/explore_away.py --topics medical,food --plan compare --report caa,ablate,clamp
                                                      # tables (and pooled) from the saved runs
Each run takes 4 to 12 minutes per topic on one thread of a shared 2-core machine.

Per topic, on the demo (``storage/demo``: tiny GPT-2, its TopK SAE at block 2's output):

- **inviting prompts**: openings (3 to 6 words) of the topic's ``eval.txt`` texts, which no fit
  saw; the unsteered model continues them on topic. **Neutral prompts**: the calibration prompts
  and the held-out evaluation prompts of the demo.
- 2 sampled continuations per prompt (24 tokens, fixed seeds, the same under every condition);
  **P(topic)** of each continuation by the topic's cross-source judge (GCIDE definitions,
  ``hf_sae_steer.evaluation.judges``); **perplexity** under the unsteered model.
- per condition and strength: the drop of P(topic) on inviting prompts (paired with the unsteered
  continuation of the same prompt and seed), the perplexity ratio on neutral prompts (the side
  effect) and on inviting prompts, each *sampled* (the steered continuations scored by the
  unsteered model) and *teacher-forced* (the steered model's perplexity of the unsteered
  continuations); curves read at matched neutral perplexity (1.05x, 1.10x) with paired bootstrap
  intervals (prompts resampled; inviting and neutral sets independently).

Methods (``x`` the site's hidden state; ``z`` its SAE code; ``S`` the chosen latents; the SAE's
error is kept: ``x' = x + scale(x) (z' - z) W_dec``):

- ``clamp0 / clampneg``: where a latent of ``S`` fires, ``z'_i = (1 - a) z_i`` (a = 1: zero;
  a > 1: negative, proportional) or ``z'_i = -c * typical_i`` (a fixed negative value);
- ``atten``: ``z'_i = z_i (1 - s p(x))`` with ``p`` a per-token topic posterior (naive Bayes over
  whether each latent of ``S`` fires, from its firing counts on fit and reference tokens);
- ``gated_ablate / gated_caa``: ``x - s p(x) (x.d) d`` and ``x - s p(x) v``: the vector methods
  applied where the SAE says the topic is;
- ``caa``: ``x - s v`` (``v`` the mean difference of fit and reference tokens, raw space);
  ``ablate``: ``x - s (x.d) d`` (Arditi et al.; ``d = v / |v|``);
- ``random``: ``clamp`` on random latents (as many, firing as often on reference tokens).

Latent rankings (token level, fit tokens against reference tokens): ``ratio`` (firing-frequency
ratio), ``odds`` (log odds ratio of firing), ``actdiff`` (mean activation difference), ``attr``
(how much a latent's activation raises the likelihood of the text that follows, fit minus
reference: activation x gradient), ``artifact`` (the shipped medical artifact's mean_diff latents).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # hf_sae_steer without installing the package
warnings.filterwarnings("ignore")

from away_edits import Edit, Stats, fit_stats, make_edit, posterior, site_states  # noqa: E402
from away_tables import SEED, print_points, report, summarise  # noqa: E402


# -- generation and measurement -------------------------------------------------------------
@dataclass
class Runner:
    model: object
    tok: object
    layer: int
    inviting: list[str]
    neutral: list[str]
    judge: object
    samples: int = 2
    tokens: int = 24
    base: dict = field(default_factory=dict)

    def __post_init__(self):
        from hf_sae_steer.generation import Generator, sampling_options

        self.gens = {}
        for name, prompts in (("inviting", self.inviting), ("neutral", self.neutral)):
            g = Generator(self.tok, prompts, samples=self.samples, seed=SEED,
                          batch_size=len(prompts) * self.samples)  # fmt: skip
            g.options = sampling_options(max_new_tokens=self.tokens, do_sample=True)
            self.gens[name] = g
        self.base = {name: self._measure(name, None) for name in self.gens}

    def _steered(self, edit: Edit | None, run: Callable[[], object]) -> object:
        block = self.model.transformer.h[self.layer]

        def hook(_m, _i, o):
            if isinstance(o, tuple):
                return (edit(o[0]),) + tuple(o[1:])
            return edit(o)

        handle = block.register_forward_hook(hook) if edit is not None else None
        try:
            with torch.no_grad():
                return run()
        finally:
            if handle is not None:
                handle.remove()

    def _measure(self, name: str, edit: Edit | None) -> dict[str, np.ndarray]:
        from hf_sae_steer.generation import perplexity

        gen = self.gens[name]
        conts, _ = self._steered(edit, lambda: gen.run(self.model))
        prompt_ids = [gen.prompt_ids[c.prompt_index] for c in conts]
        with torch.no_grad():
            ppl = perplexity(self.model, self.tok, prompt_ids, [c.token_ids for c in conts],
                             batch_size=64).numpy()  # fmt: skip
        n_prompts = len(gen.prompts)
        shape = (n_prompts, self.samples)
        out = {"ppl": ppl.reshape(shape), "texts": [c.text for c in conts]}
        if edit is None:  # what the steered model makes of the unsteered text (teacher-forced)
            out["conts"] = (prompt_ids, [c.token_ids for c in conts])
        else:
            ids, tokens = self.base[name]["conts"]
            forced = self._steered(edit, lambda: perplexity(self.model, self.tok, ids, tokens,
                                                             batch_size=64))  # fmt: skip
            out["forced"] = forced.numpy().reshape(shape)
        if name == "inviting":
            out["p"] = self.judge.probability([c.text for c in conts]).numpy().reshape(shape)
        return out

    def point(self, edit: Edit) -> dict[str, np.ndarray]:
        """Per prompt (mean over samples): the P(topic) change on inviting prompts and the log
        perplexity ratios on both sets, paired with the unsteered continuations."""
        res = {}
        for name in ("inviting", "neutral"):
            m = self._measure(name, edit)
            lr = np.log(m["ppl"] / self.base[name]["ppl"])
            res[f"lr_{name}"] = np.nanmean(np.where(np.isfinite(lr), lr, np.nan), axis=1)
            forced = np.log(m["forced"] / self.base[name]["ppl"])
            res[f"forced_{name}"] = np.nanmean(np.where(np.isfinite(forced), forced, np.nan), 1)
            if name == "inviting":
                res["dp"] = (m["p"] - self.base[name]["p"]).mean(axis=1)
                res["texts"] = m["texts"][:: self.samples][:3]
        return res


# -- plans ----------------------------------------------------------------------------------
CAA_GRID = (0.05, 0.1, 0.2, 0.3, 0.45)  # norm fraction of mean |x|
ABLATE_GRID = (0.5, 1.0, 2.0, 3.0, 4.0)
CLAMP_GRID = (1.0, 2.0, 3.0, 5.0)
NEG_GRID = (0.5, 1.0, 2.0, 4.0)
ATTEN_GRID = (1.0, 2.0, 3.0, 5.0)
GATED_GRID = (1.0, 2.0, 3.0, 4.0, 6.0)
GATED_CAA_GRID = (1.0, 2.0, 4.0, 6.0, 8.0)


Condition = tuple[str, str, tuple, Tensor | None, dict]


def random_like(stats: Stats, sae, chosen: Tensor) -> Tensor:
    """As many random latents as ``chosen``, each firing about as often on reference tokens as
    one of them, none of them chosen."""
    fires = stats.fire_ref
    taken = set(chosen.tolist())
    pool = [i for i in range(sae.d_sae) if fires[i] > 0 and i not in taken]
    rng = random.Random(SEED)
    out: list[int] = []
    for f in sorted(float(fires[i]) for i in chosen):
        near = sorted(pool, key=lambda i: abs(float(fires[i]) - f))[:8]
        out.append(rng.choice([i for i in near if i not in out] or near))
    return torch.tensor(out)


def conditions(plan: str, stats: Stats, sae, args) -> list[Condition]:
    """(label, family, strengths, latents, options) of a plan."""
    caa_strengths = tuple(r * stats.mean_norm / float(stats.v.norm()) for r in CAA_GRID)
    out: list[Condition] = [("caa", "caa", caa_strengths, None, {}),
                            ("ablate", "ablate", ABLATE_GRID, None, {})]  # fmt: skip
    if plan == "rank":
        for how in args.rankings.split(","):
            order = stats.rank(how)
            for k in (int(k) for k in args.ks.split(",")):
                out.append((f"clamp {how} k={k}", "clamp", CLAMP_GRID, order[:k], {}))
        return out
    for spec in filter(None, args.sets.split(",")):  # clamping: "ranking:k"
        how, k = spec.split(":")
        chosen = stats.rank(how)[: int(k)]
        out += [
            (f"clamp {how} k={k}", "clamp", CLAMP_GRID, chosen, {}),
            (f"clampneg {how} k={k}", "clampneg", NEG_GRID, chosen, {}),
            (f"random k={k}", "random", CLAMP_GRID, random_like(stats, sae, chosen), {}),
        ]
    for spec in filter(None, args.posts.split(",")):  # posterior-scaled: "ranking:k:prior logit"
        how, k, prior = spec.split(":")
        chosen = stats.rank(how)[: int(k)]
        tag, opts = f"{how} k={k} prior={prior}", {"prior_logit": float(prior)}
        out += [
            (f"atten {tag}", "atten", ATTEN_GRID, chosen, opts),
            (f"gated_ablate {tag}", "gated_ablate", GATED_GRID, chosen, opts),
            (f"gated_caa {tag}", "gated_caa", GATED_CAA_GRID, chosen, opts),
        ]
    if args.families:
        keep = set(args.families.split(",")) | {"caa", "ablate"}
        out = [c for c in out if c[1] in keep]
    return out


def diagnose(model, tok, sae, stats: Stats, topic, layer: int) -> None:
    """Which latents fire where the topic is written in texts the fit never saw: per ranking and
    size, the share of held-out topic tokens (``eval.txt``) and of held-out other tokens (the
    benchmark negatives) where any chosen latent fires, and the token AUC of the naive-Bayes
    posterior; the same AUC for the projection on the CAA direction."""
    from hf_sae_steer.evaluation.classifier import auc

    def codes(texts):
        x = torch.cat([h for h, _ in site_states(model, tok, texts, layer)])
        with torch.no_grad():
            return x, sae.encode(x)

    xe, ze = codes(topic.eval)
    xn, zn = codes(topic.negatives[:200])
    labels = [1] * len(ze) + [0] * len(zn)
    d = stats.v / stats.v.norm()
    proj = torch.cat([xe @ d, xn @ d])
    print(f"   tokens: {len(ze)} held-out topic, {len(zn)} held-out other; AUC of x.d "
          f"{auc(proj, labels):.3f}")  # fmt: skip
    n_e = [len(h) for h, _ in site_states(model, tok, topic.eval, layer)]
    n_n = [len(h) for h, _ in site_states(model, tok, topic.negatives[:200], layer)]
    text_labels = [1] * len(n_e) + [0] * len(n_n)

    def per_text_mean(values, lengths):
        return torch.stack([c.mean() for c in values.split(lengths)])

    pt = torch.cat([per_text_mean(xe @ d, n_e), per_text_mean(xn @ d, n_n)])
    print(f"   text AUC of mean x.d {auc(pt, text_labels):.3f}")
    for how in ("ratio", "spread", "odds", "actdiff", "attr"):
        order = stats.rank(how)
        for k in (5, 10, 20, 50, 100, 200):
            lat = order[:k]
            fe = float((ze[:, lat] > 0).any(-1).float().mean())
            fn = float((zn[:, lat] > 0).any(-1).float().mean())
            p_of = posterior(stats, lat)
            pe, pn = p_of(ze), p_of(zn)
            lo_e, lo_n = (pe / (1 - pe)).log(), (pn / (1 - pn)).log()
            text_auc = auc(torch.cat([per_text_mean(lo_e, n_e), per_text_mean(lo_n, n_n)]),
                           text_labels)  # fmt: skip
            print(f"   {how:8s} k={k:<4d} fires on topic {fe:.2f} other {fn:.2f}; posterior AUC "
                  f"{auc(torch.cat([pe, pn]), labels):.3f} (texts {text_auc:.3f}), mean p topic "
                  f"{float(pe.mean()):.2f} other {float(pn.mean()):.2f}", flush=True)  # fmt: skip


def inviting_prompts(texts: list[str], n: int) -> list[str]:
    """Openings of ``n`` of ``texts`` (3 to 6 words), in a fixed shuffled order."""
    picked = list(texts)
    random.Random(SEED).shuffle(picked)
    return [" ".join(t.split()[: 3 + i % 4]) for i, t in enumerate(picked[:n])]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--topics", default="medical,food,animal,body")
    p.add_argument("--plan", choices=("diagnose", "rank", "compare"), default="compare")
    p.add_argument("--rankings", default="ratio,odds,actdiff,attr")
    p.add_argument("--ks", default="5,10,20,50")
    p.add_argument("--sets", default="odds:50,actdiff:5", help="clamped latents, ranking:k")
    p.add_argument("--posts", default="odds:100:0,odds:100:-3",
                   help="posterior latents, ranking:k:prior logit")  # fmt: skip
    p.add_argument("--families", default="", help="only these (e.g. clamp,random,atten)")
    p.add_argument("--n-inviting", type=int, default=32)
    p.add_argument("--n-neutral", type=int, default=24, help="held-out prompts beside the 24 "
                   "calibration prompts")  # fmt: skip
    p.add_argument("--samples", type=int, default=2)
    p.add_argument("--tokens", type=int, default=24)
    p.add_argument("--boots", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1, help="1 is fastest on a shared machine")
    p.add_argument("--out", type=Path, default=Path("/tmp/explore_away"))
    p.add_argument("--report", default="", help="print the table of saved runs for these "
                   "conditions (comma-separated labels or their prefixes) and stop")  # fmt: skip
    a = p.parse_args(argv)
    if a.report:
        for side in ("lr_neutral", "forced_neutral"):
            report(a.out, a.plan, a.topics.split(","), a.report.split(","), a.boots, side=side)
        return
    torch.set_num_threads(a.threads)
    torch.manual_seed(SEED)
    from hf_sae_steer import load_prompts, load_sae
    from hf_sae_steer.data.embedders import load_embedder
    from hf_sae_steer.evaluation.judges import CachedEmbedder, build_judge, load_judge_texts
    from hf_sae_steer.evaluation.topics import load_topics
    from hf_sae_steer.models import load_model
    from hf_sae_steer.scores.record import load_scores
    from hf_sae_steer.scoring.calibration import CALIBRATION_PROMPTS

    demo, topics_dir = ROOT / "storage" / "demo", ROOT / "storage" / "topics"
    model, tok = load_model(str(demo / "model"))
    model.eval()
    sae = load_sae(demo / "sae")
    layer = 2
    reference = load_prompts(demo / "reference.txt")
    neutral = list(CALIBRATION_PROMPTS) + load_prompts(demo / "eval_prompts.txt")[: a.n_neutral]
    embedder = CachedEmbedder(load_embedder("sentence-transformers/all-MiniLM-L6-v2", None)[0])
    a.out.mkdir(parents=True, exist_ok=True)
    cache_file = a.out / "judge_embeddings.pt"  # the judges' texts, embedded once across runs
    if cache_file.exists():
        embedder.cache.update(torch.load(cache_file, weights_only=True))
    topics = {t.name: t for t in load_topics(topics_dir)}
    for name in a.topics.split(","):
        t0 = time.time()
        topic = topics[name]
        judge = build_judge(embedder, load_judge_texts(topics_dir, name),
                            transfer=(topic.eval, topic.negatives))  # fmt: skip
        torch.save(dict(embedder.cache), cache_file)
        stats = fit_stats(model, tok, sae, topic.fit, reference, layer)
        if name == "medical":  # the demo's artifact was fitted on this topic's fit texts
            latents, weights = load_scores(demo / "scores").latent_weights()
            stats.artifact = latents[weights.argsort(descending=True)]
        runner = Runner(model, tok, layer, inviting_prompts(topic.eval, a.n_inviting), neutral,
                        judge, a.samples, a.tokens)  # fmt: skip
        base_p = float(runner.base["inviting"]["p"].mean())
        share = float(stats.v.norm()) / stats.mean_norm
        print(f"\n### {name}: judge AUC held-out {judge.heldout_auc:.3f}, transfer "
              f"{judge.transfer_auc:.3f}; |v|/mean|x| {share:.3f}; unsteered P(topic) "
              f"{base_p:.3f}; setup {time.time() - t0:.0f} s", flush=True)  # fmt: skip
        if a.plan == "diagnose":
            diagnose(model, tok, sae, stats, topic, layer)
            continue
        curves, record = {}, {}
        for label, family, strengths, latents, opts in conditions(a.plan, stats, sae, a):
            curve = [runner.point(make_edit(sae, stats, family, s, latents, **opts))
                     for s in strengths]  # fmt: skip
            print_points(label, strengths, curve)
            curves[label] = curve
            record[label] = {
                "strengths": list(strengths),
                "latents": None if latents is None else latents.tolist(),
                "points": [{k: (v.tolist() if isinstance(v, np.ndarray) else v)
                            for k, v in c.items()} for c in curve],
            }  # fmt: skip
        table = summarise(name, curves, base_p, a.boots)
        (a.out / f"{a.plan}_{name}.json").write_text(json.dumps({
            "topic": name, "base_p": base_p, "judge": judge.summary(), "conditions": record,
            "matched": table}, indent=1))  # fmt: skip
        print(f"{name}: {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
