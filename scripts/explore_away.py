"""Which suppression steers the demo model *away* from a topic? A bounded research run (issue 21).

    python scripts/explore_away.py --topics medical,food --plan rank      # which latents, how many
    python scripts/explore_away.py --topics medical,food --plan compare   # every method, matched
    python scripts/explore_away.py --topics plant --plan compare --sets odds:50 --posts odds:100:0

Per topic, on the demo (``storage/demo``: tiny GPT-2, its TopK SAE at block 2's output):

- **inviting prompts**: openings (3 to 6 words) of the topic's ``eval.txt`` texts, which no fit
  saw; the unsteered model continues them on topic. **Neutral prompts**: the calibration prompts
  and the held-out evaluation prompts of the demo.
- 2 sampled continuations per prompt (24 tokens, fixed seeds, the same under every condition);
  **P(topic)** of each continuation by the topic's cross-source judge (GCIDE definitions,
  ``hf_sae_steer.evaluation.judges``); **perplexity** under the unsteered model.
- per condition and strength: the drop of P(topic) on inviting prompts (paired with the unsteered
  continuation of the same prompt and seed), the perplexity ratio on neutral prompts (the side
  effect) and on inviting prompts; curves read at matched neutral perplexity (1.05x, 1.10x) with
  paired bootstrap intervals (prompts resampled; inviting and neutral sets independently).

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
reference: activation x gradient), ``mean_diff`` (the artifact's rule, k latents).
"""

from __future__ import annotations

import argparse
import json
import math
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
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")

SEED = 0
TARGETS = (1.05, 1.10)
Edit = Callable[[Tensor], Tensor]


# -- statistics of the fit ------------------------------------------------------------------
@dataclass
class Stats:
    """Token-level statistics of one topic's fit texts against the reference set."""

    n_fit: int
    n_ref: int
    fire_fit: Tensor  # [n] tokens where each latent fires
    fire_ref: Tensor
    act_fit: Tensor  # [n] summed activation
    act_ref: Tensor
    attr_fit: Tensor  # [n] summed activation x gradient of the following text's log-likelihood
    attr_ref: Tensor
    v: Tensor  # [d] mean raw x (fit) - mean raw x (ref)
    mean_norm: float  # mean |x| over reference tokens
    typical: Tensor  # [n] mean activation where active, reference tokens
    artifact: Tensor | None  # the shipped medical artifact's latents (mean_diff k=10), if any
    texts_fit: Tensor  # [n] fit texts on which each latent fires
    texts_ref: Tensor  # [n] reference texts on which each latent fires

    def freq(self) -> tuple[Tensor, Tensor]:
        fa = (self.fire_fit + 0.5) / (self.n_fit + 1)
        fr = (self.fire_ref + 0.5) / (self.n_ref + 1)
        return fa, fr

    def rank(self, how: str) -> Tensor:
        fa, fr = self.freq()
        if how == "ratio":
            key = fa / fr
            key[self.fire_fit < 3] = -1  # a latent seen on two fit tokens says little
        elif how == "odds":
            key = (fa / (1 - fa)).log() - (fr / (1 - fr)).log()
            key[self.fire_fit < 3] = -1e9
        elif how == "spread":  # the frequency ratio among latents firing on many fit texts
            key = fa / fr
            key[self.texts_fit < max(3, 0.125 * float(self.texts_fit.max()))] = -1
        elif how == "artifact":  # the shipped artifact's mean_diff latents, heaviest first
            if self.artifact is None:
                raise ValueError("only the medical topic has a shipped artifact")
            return self.artifact
        elif how == "actdiff":
            key = self.act_fit / self.n_fit - self.act_ref / self.n_ref
        elif how == "attr":
            key = self.attr_fit / self.n_fit - self.attr_ref / self.n_ref
        else:
            raise ValueError(how)
        return key.argsort(descending=True)


def site_states(model, tok, texts, layer, *, grad: bool = False):
    """Per text: the raw states at block ``layer``'s output (first position dropped) and, with
    ``grad``, the gradient of the text's total log-likelihood with respect to them."""
    out = []
    block = model.transformer.h[layer]
    for text in texts:
        ids = tok(text, return_tensors="pt")["input_ids"][:, :128]
        held: dict[str, Tensor] = {}

        def keep(_m, _i, o, held=held):
            h = o[0] if isinstance(o, tuple) else o
            if grad:
                h.retain_grad()
            held["h"] = h

        handle = block.register_forward_hook(keep)
        try:
            with torch.set_grad_enabled(grad):
                logits = model(ids).logits
                if grad:
                    logp = torch.log_softmax(logits[0, :-1].float(), -1)
                    logp.gather(-1, ids[0, 1:, None]).sum().backward()
        finally:
            handle.remove()
        h = held["h"][0, 1:].detach()
        g = held["h"].grad[0, 1:].detach() if grad else None
        out.append((h, g))
    return out


def fit_stats(model, tok, sae, fit, reference, layer) -> Stats:
    parts, per_text = {}, {}
    for name, texts in (("fit", fit), ("ref", reference)):
        rows = site_states(model, tok, texts, layer, grad=True)
        with torch.no_grad():
            per_text[name] = sum((sae.encode(h) > 0).any(0).float() for h, _ in rows)
        x = torch.cat([h for h, _ in rows])
        g = torch.cat([gg for _, gg in rows])
        with torch.no_grad():
            z = sae.encode(x)
            scale = sae.input_scale(x)
            # d logp / d z_i = scale * W_dec[i] . g ; attribution = z_i * that
            attr = z * ((g * scale) @ sae.W_dec.T)
        parts[name] = (x, z, attr)
    (xf, zf, af), (xr, zr, ar) = parts["fit"], parts["ref"]
    active = (zr > 0).sum(0)
    typical = torch.where(active > 0, zr.sum(0) / active.clamp(min=1), torch.zeros(()))
    return Stats(
        len(xf), len(xr), (zf > 0).sum(0).float(), (zr > 0).sum(0).float(), zf.sum(0),
        zr.sum(0), af.sum(0), ar.sum(0), xf.mean(0) - xr.mean(0),
        float(xr.norm(dim=-1).mean()), typical, None, per_text["fit"], per_text["ref"],
    )  # fmt: skip


# -- the suppressions: pure functions of x --------------------------------------------------
def latent_change(sae, x: Tensor, new_code: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """``x + scale(x) (z' - z) W_dec`` with ``z' = new_code(z, x)``: the SAE's error kept."""
    xp, info = sae.preprocess(x)
    z = sae.activate(sae.encode_pre(xp))
    dz = new_code(z, x) - z
    return x + sae.scale_change(dz @ sae.W_dec, info)


def posterior(stats: Stats, latents: Tensor, prior_logit: float = 0.0):
    """``p(topic | token)``: naive Bayes over whether each of ``latents`` fires."""
    fa, fr = stats.freq()
    fa, fr = fa[latents], fr[latents]
    on = (fa / fr).log()
    off = ((1 - fa) / (1 - fr)).log()
    base = float(off.sum()) + prior_logit

    def p_of(z: Tensor) -> Tensor:
        fires = (z[..., latents] > 0).float()
        return torch.sigmoid(base + fires @ (on - off))

    return p_of


def make_edit(sae, stats: Stats, family: str, strength: float, latents: Tensor | None,
              prior_logit: float = 0.0) -> Edit:  # fmt: skip
    v = stats.v
    d = v / v.norm()
    if family == "caa":
        return lambda x: x - strength * v
    if family == "ablate":
        return lambda x: x - strength * (x @ d)[..., None] * d
    assert latents is not None
    mask = torch.zeros(sae.d_sae)
    mask[latents] = 1.0
    if family in ("clamp", "random"):  # z_i -> (1 - a) z_i on the chosen latents
        return lambda x: latent_change(sae, x, lambda z, _x: z - strength * z * mask)
    if family == "clampneg":  # z_i -> -c * typical_i where it fires
        target = -strength * stats.typical

        def neg(z, _x):
            return torch.where((z > 0) & (mask > 0), target, z)

        return lambda x: latent_change(sae, x, neg)
    p_of = posterior(stats, latents, prior_logit)
    if family == "atten":
        return lambda x: latent_change(
            sae, x, lambda z, _x: z - (strength * p_of(z))[..., None] * z * mask
        )

    def code_p(x: Tensor) -> Tensor:
        xp, _ = sae.preprocess(x)
        return p_of(sae.activate(sae.encode_pre(xp)))

    if family == "gated_ablate":
        return lambda x: x - (strength * code_p(x) * (x @ d))[..., None] * d
    if family == "gated_caa":
        return lambda x: x - (strength * code_p(x))[..., None] * v
    raise ValueError(family)


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


# -- reading curves at matched neutral perplexity --------------------------------------------
def weights(n: int, boots: int, rng: np.random.Generator) -> np.ndarray:
    picks = rng.integers(0, n, size=(boots, n))
    w = np.zeros((boots, n))
    np.add.at(w, (np.arange(boots)[:, None], picks), 1.0)
    return np.vstack([np.ones(n), w]) / n


def matched(curve: list[dict], target: float, w_inv, w_neu, side: str) -> np.ndarray:
    """Drop of P(topic) at neutral perplexity ``target`` per resample row (NaN: not reached);
    ``side`` is the side effect matched: ``lr_neutral`` (sampled continuations' perplexity) or
    ``forced_neutral`` (the steered model's perplexity of the unsteered continuations)."""
    from hf_sae_steer.evaluation.matched import at_ratio

    dp = np.stack([c["dp"] for c in curve])  # [points, prompts]
    lr = np.stack([np.nan_to_num(c[side]) for c in curve])
    return at_ratio(w_inv @ dp.T, w_neu @ lr.T, target)


def interval(values: np.ndarray) -> str:
    est, boots = values[0], values[1:]
    if math.isnan(est):
        return "   –  "
    if np.isnan(boots).mean() > 0.025:
        return f"{est:+.3f} [n/a]"
    lo, hi = np.nanpercentile(boots, [2.5, 97.5])
    return f"{est:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def summarise(topic: str, curves: dict[str, list[dict]], base_p: float, boots: int,
              against: tuple[str, ...] = ("caa", "ablate")) -> dict:  # fmt: skip
    rng = np.random.default_rng(SEED)
    any_curve = next(iter(curves.values()))
    w_inv = weights(len(any_curve[0]["dp"]), boots, rng)
    w_neu = weights(len(any_curve[0]["lr_neutral"]), boots, rng)
    table: dict = {}
    for side, name in (("lr_neutral", "sampled"), ("forced_neutral", "teacher-forced")):
        print(f"\n== {topic}: unsteered P(topic) on inviting prompts {base_p:.3f}; matched at "
              f"{name} neutral perplexity")  # fmt: skip
        print(f"{'condition':34s} {'ΔP at 1.05x':>26s} {'ΔP at 1.10x':>26s}  vs "
              + " / ".join(against) + " at 1.10x")  # fmt: skip
        at = {(k, t): matched(c, t, w_inv, w_neu, side) for k, c in curves.items()
              for t in TARGETS}  # fmt: skip
        for label in curves:
            cells = [interval(at[(label, t)]) for t in TARGETS]
            diffs = []
            for other in against:
                key = next((k for k in curves if k.split(" ")[0] == other), None)
                if key is None or key == label:
                    continue
                diffs.append(interval(at[(label, 1.10)] - at[(key, 1.10)]))
            print(f"{label:34s} {cells[0]:>26s} {cells[1]:>26s}  {' / '.join(diffs)}")
            table.setdefault(name, {})[label] = {
                str(t): [at[(label, t)][0], *_bounds(at[(label, t)])] for t in TARGETS
            }
    return table


def _bounds(values: np.ndarray) -> list[float]:
    boots = values[1:]
    if math.isnan(values[0]) or np.isnan(boots).mean() > 0.025:
        return [math.nan, math.nan]
    return [float(v) for v in np.nanpercentile(boots, [2.5, 97.5])]


def print_points(label: str, strengths, curve: list[dict]) -> None:
    for s, c in zip(strengths, curve, strict=True):
        print(f"   {label:32s} s={s:<6.3g} ΔP {np.mean(c['dp']):+.3f}  neutral x"
              f"{math.exp(np.nanmean(c['lr_neutral'])):.3f} (forced x"
              f"{math.exp(np.nanmean(c['forced_neutral'])):.3f})  inviting x"
              f"{math.exp(np.nanmean(c['lr_inviting'])):.3f} (forced x"
              f"{math.exp(np.nanmean(c['forced_inviting'])):.3f})", flush=True)  # fmt: skip


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


def report(folder: Path, plan: str, topics: list[str], labels: list[str], boots: int,
           target: float = 1.10) -> None:  # fmt: skip
    """One markdown table from saved runs: per topic and condition, the drop of P(topic) on
    inviting prompts at ``target`` sampled neutral perplexity (95% interval), the inviting
    perplexity ratio there, and the paired difference to CAA subtraction and to ablation."""
    from hf_sae_steer.evaluation.matched import at_ratio

    print(f"| topic | condition | ΔP(topic) at {target:.2f}x neutral ppl | inviting ppl there "
          "| minus CAA | minus ablation |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for name in topics:
        path = folder / f"{plan}_{name}.json"
        if not path.exists():
            continue
        run = json.loads(path.read_text())
        conds = run["conditions"]
        curves = {k: [{f: np.array(v, dtype=float) if isinstance(v, list) and f != "texts" else v
                       for f, v in p.items()} for p in c["points"]] for k, c in conds.items()}
        rng = np.random.default_rng(SEED)
        first = next(iter(curves.values()))[0]
        w_inv = weights(len(first["dp"]), boots, rng)
        w_neu = weights(len(first["lr_neutral"]), boots, rng)
        at = {k: matched(c, target, w_inv, w_neu, "lr_neutral") for k, c in curves.items()}
        for label in labels:
            key = next((k for k in curves if k == label or k.startswith(label + " ")), None)
            if key is None:
                continue
            c = curves[key]
            lr = np.stack([np.nan_to_num(p["lr_neutral"]) for p in c])
            li = np.stack([np.nan_to_num(p["lr_inviting"]) for p in c])
            inv = at_ratio(w_inv[:1] @ li.T, w_neu[:1] @ lr.T, target)[0]
            inv_s = "–" if math.isnan(inv) else f"{math.exp(inv):.2f}"
            diffs = [interval(at[key] - at[b]) if b in at and b != key else ""
                     for b in ("caa", "ablate")]  # fmt: skip
            print(f"| {name} (P {run['base_p']:.2f}) | {key} | {interval(at[key])} | {inv_s} "
                  f"| {diffs[0]} | {diffs[1]} |")  # fmt: skip


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
        report(a.out, a.plan, a.topics.split(","), a.report.split(","), a.boots)
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
