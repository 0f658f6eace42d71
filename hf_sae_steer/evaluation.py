"""Steering quality, measured: concept relevance against fluency for each method and strength.

No LLM judge is needed: relevance is the sentence-embedding cosine of a continuation to the
alignment set, fluency is the continuation's perplexity under the *unsteered* model and its
share of repeated 3-grams, cost is generated tokens per second. Every method sees the same
prompts and the same sampling seeds (common random numbers), so differences between methods
are not sampling noise between runs; intervals are 95% percentile bootstraps over prompts.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from hf_sae_steer.data import (
    DEFAULT_EMBEDDER,
    Embedder,
    embed_prompts,
    load_embedder,
    load_prompts,
)
from hf_sae_steer.eval_report import EvalResult, bootstrap_ci, label, summarise
from hf_sae_steer.interventions import METHODS
from hf_sae_steer.sae.base import SAE
from hf_sae_steer.steered import SteeredModel

__all__ = [
    "EvalResult",
    "bootstrap_ci",
    "concept_relevance",
    "evaluate",
    "perplexity",
    "repeated_ngram_share",
]

TokenIds = Sequence[int]
NEAREST_K = 5


# -- measures ----------------------------------------------------------------------------
def concept_relevance(
    texts: Sequence[str], alignment_embeddings: Tensor, embedder: Embedder, *, k: int = 5
) -> tuple[Tensor, Tensor]:
    """Cosine of each text's sentence embedding to the alignment set: ``(centroid, nearest)``.

    ``centroid[i]`` is the cosine to the L2-normalised mean of the (L2-normalised) alignment
    embeddings; ``nearest[i]`` is the mean cosine to the ``k`` most similar alignment texts (all
    of them when there are fewer than ``k``). Embeddings are L2-normalised here, so a callable
    embedder need not normalise. Returns two float64 tensors ``[len(texts)]``.
    """
    if not texts:
        return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
    (emb,), _ = embed_prompts(embedder, [list(texts)], progress=False)
    emb = F.normalize(emb.double(), dim=-1)
    align = F.normalize(torch.as_tensor(alignment_embeddings).double(), dim=-1)
    centroid = F.normalize(align.mean(dim=0), dim=0)
    sims = emb @ align.T
    nearest = sims.topk(min(k, align.shape[0]), dim=1).values.mean(dim=1)
    return emb @ centroid, nearest


def repeated_ngram_share(tokens: str | TokenIds, n: int = 3) -> float:
    """Share of the ``n``-gram occurrences whose ``n``-gram occurs more than once in ``tokens``.

    A string is split on whitespace; otherwise pass token ids. All distinct ``n``-grams give 0;
    one ``n``-gram repeated three or more times (``a b c a b c a b c``, or one token repeated)
    gives exactly 1: each of its occurrences, including the first, is a repeat. Fewer than
    ``n`` tokens have no ``n``-grams: 0.
    """
    seq = tokens.split() if isinstance(tokens, str) else list(tokens)
    grams = [tuple(seq[i : i + n]) for i in range(len(seq) - n + 1)]
    if not grams:
        return 0.0
    counts = Counter(grams)
    return sum(1 for g in grams if counts[g] > 1) / len(grams)


@torch.no_grad()
def perplexity(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str | TokenIds],
    continuations: Sequence[str | TokenIds],
    *,
    batch_size: int = 16,
) -> Tensor:
    """``exp(mean NLL)`` of each continuation's tokens given its prompt, under ``model`` as is.

    Call it on the unsteered model (no live SteeredModel, or inside ``steered.disabled()``).
    Strings are tokenised (prompts with the tokenizer's special tokens, continuations without);
    token ids are used as given. Sequences are right-padded and masked, so padding changes no
    score. An empty continuation has no perplexity: NaN. Returns float64 ``[n]``.
    """
    if len(prompts) != len(continuations):
        raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations.")
    pairs = [
        (_ids(tokenizer, p, True), _ids(tokenizer, c, False))
        for p, c in zip(prompts, continuations, strict=True)
    ]
    out = torch.full((len(pairs),), math.nan, dtype=torch.float64)
    device = _device(model)
    pad = _pad_id(tokenizer)
    todo = sorted(
        (i for i, (_, c) in enumerate(pairs) if c), key=lambda i: -sum(map(len, pairs[i]))
    )
    for start in range(0, len(todo), max(1, batch_size)):
        rows = todo[start : start + batch_size]
        seqs = [pairs[i][0] + pairs[i][1] for i in rows]
        width = max(map(len, seqs))
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        scored = torch.zeros(len(rows), width - 1, dtype=torch.bool)  # targets 1..width-1
        for r, i in enumerate(rows):
            p, c = pairs[i]
            ids[r, : len(p) + len(c)] = torch.tensor(p + c)
            mask[r, : len(p) + len(c)] = 1
            # A continuation token at position j is predicted from position j - 1; with an
            # empty prompt the first one has no context and is not scored.
            scored[r, max(len(p), 1) - 1 : len(p) + len(c) - 1] = True
        ids, mask = ids.to(device), mask.to(device)
        logp = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float().log_softmax(-1)
        nll = -logp.gather(-1, ids[:, 1:, None]).squeeze(-1).double().cpu()
        total = (nll * scored).sum(dim=1)
        count = scored.sum(dim=1)
        out[rows] = torch.where(count > 0, (total / count.clamp_min(1)).exp(), math.nan)
    return out


# -- the sweep ---------------------------------------------------------------------------
def evaluate(
    model: nn.Module,
    tokenizer: Any,
    sae: SAE,
    scores: Any,
    prompts: Any,
    alignment: Any,
    *,
    methods: Sequence[str] = METHODS,
    preserve_error: Sequence[bool] = (False, True),
    strengths: Sequence[float] = (0.5, 1.0, 2.0),
    samples: int = 3,
    max_new_tokens: int = 24,
    seed: int = 0,
    temperature: float = 1.0,
    top_k: int = 50,
    embedder: Embedder | None = None,
    layer: int | None = None,
    site: str | None = None,
    batch_size: int = 16,
    n_boot: int = 1000,
    progress: bool = True,
) -> EvalResult:
    """Generate from held-out ``prompts`` under each method x preserve_error x strength and
    measure concept relevance, fluency and cost against the unsteered ``orig`` baseline.

    >>> result = evaluate(model, tok, load_sae("storage/demo/sae"),              # doctest: +SKIP
    ...                   FeatureScores.from_pretrained("storage/demo/scores"),
    ...                   prompts="storage/demo/prompts.txt",
    ...                   alignment="storage/demo/alignment.txt", strengths=(1.0, 2.0))
    >>> print(result.to_markdown()); result.save("eval/")

    ``prompts``/``alignment`` take anything :func:`load_prompts` does; prompts should be held
    out from the alignment and reference sets. ``orig`` runs once (it ignores strength and
    preserve_error); ``sae`` with preserve_error is the identity and is reported as such.
    Sample ``j`` of every prompt uses the same seed under every configuration; results depend
    on ``batch_size`` only through which rows share a seeded batch. ``temperature <= 0`` is
    greedy decoding (then use ``samples=1``). ``embedder`` defaults to the scores' embedder.
    """
    prompt_texts, align_texts = load_prompts(prompts), load_prompts(alignment)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"Unknown methods {unknown}; use some of {', '.join(METHODS)}.")
    if samples < 1 or max_new_tokens < 1:
        raise ValueError("samples and max_new_tokens must be at least 1.")
    if not strengths and any(m != "orig" for m in methods):
        raise ValueError("Give at least one strength for the steering methods.")
    embed_model, embedder_name = _embedder_for(embedder, scores)  # loaded once, used twice
    sampling = {"max_new_tokens": max_new_tokens, "do_sample": temperature > 0}
    if temperature > 0:
        sampling.update(temperature=temperature, top_k=top_k, top_p=1.0)
    gen = _Generator(model, tokenizer, prompt_texts, samples, seed, batch_size, sampling)
    groups = [("orig", None)] if "orig" in methods else []
    groups += [(m, bool(e)) for m in dict.fromkeys(methods) if m != "orig" for e in preserve_error]
    n_configs = sum(1 if m == "orig" else len(strengths) for m, _ in groups)
    clock = [time.perf_counter()]
    bar = tqdm(total=n_configs, desc="eval", unit="config", disable=not progress)
    was_training = model.training
    model.eval()
    try:
        gen.warm_up(model)
        for method, keep_err in groups:
            if method == "orig":  # the plain model: the unsteered baseline and its speed
                gen.run(model, method, None, None)
                bar.update(1)
                continue
            steered = SteeredModel(model, sae, layer, site, method, scores, strengths[0], keep_err)
            try:
                for strength in strengths:
                    steered.set_strength(strength)  # cheap: no hook moves
                    gen.run(steered, method, keep_err, float(strength))
                    bar.update(1)
            finally:
                steered.remove()  # no hooks survive, even on error
        # Every hook is gone now, so this is the unsteered model's perplexity.
        records = gen.records
        prompt_ids = [gen.prompt_ids[r["prompt_index"]] for r in records]
        ids = [r.pop("_ids") for r in records]
        clock.append(time.perf_counter())
        ppl = perplexity(model, tokenizer, prompt_ids, ids, batch_size=batch_size)
        clock.append(time.perf_counter())
    finally:
        bar.close()
        model.train(was_training)
    (align_emb,), _ = embed_prompts(embed_model, [align_texts], progress=False)
    texts = [r["continuation"] for r in records]
    centroid, nearest = concept_relevance(texts, align_emb, embed_model, k=NEAREST_K)
    for r, c, n, p in zip(records, centroid.tolist(), nearest.tolist(), ppl.tolist(), strict=True):
        r.update(relevance_centroid=c, relevance_nearest=n, perplexity=p)
    clock.append(time.perf_counter())
    config = {
        "methods": list(methods),
        "preserve_error": [bool(e) for e in preserve_error],
        "strengths": [float(s) for s in strengths],
        "samples": samples,
        "seed": seed,
        **sampling,
        "batch_size": batch_size,
        "n_boot": n_boot,
        "embedder": embedder_name,
        "nearest_k": min(NEAREST_K, len(align_texts)),
        "layer": _first(layer, getattr(scores, "layer", None), sae.cfg.layer),
        "site": _first(site, getattr(scores, "site", None), sae.cfg.site),
        "n_prompts": len(prompt_texts),
        "n_alignment": len(align_texts),
        "model": getattr(getattr(model, "config", None), "_name_or_path", None),
        "sae": sae.cfg.spec,
        "sae_fingerprint": sae.fingerprint(),
        "seconds": dict(
            zip(("generate", "perplexity", "embed"), np.diff(clock).tolist(), strict=True)
        ),
    }
    rows = summarise(records, gen.timing, n_boot, seed)
    return EvalResult(rows=rows, samples=records, config=config)


class _Generator:
    """Continuations of every prompt, ``samples`` each; the seed of a batch is fixed by its
    position, so every configuration sees the same seeds for the same rows."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        prompts: list[str],
        samples: int,
        seed: int,
        batch_size: int,
        sampling: dict[str, Any],
    ) -> None:
        self.tokenizer, self.prompts, self.seed = tokenizer, prompts, seed
        self.prompt_ids: list[list[int]] = [list(t) for t in tokenizer(prompts)["input_ids"]]
        self.items = [(p, j) for p in range(len(prompts)) for j in range(samples)]
        self.batch_size = max(1, batch_size)
        self.pad, self.device = _pad_id(tokenizer), _device(model)
        self.eos = _eos_ids(model, tokenizer)
        self.kwargs = {**sampling, "pad_token_id": self.pad}
        self.records: list[dict[str, Any]] = []
        self.timing: dict[tuple, tuple[int, float]] = {}  # config -> (tokens, seconds)

    def warm_up(self, model: nn.Module) -> None:
        """One short untimed generation, so the first configuration's tokens/s pays no
        one-time start-up costs (allocator, kernels, lazy imports)."""
        ids, mask = self._left_padded([self.prompt_ids[p] for p, _ in self.items[:2]])
        with torch.random.fork_rng(devices=_cuda_devices(self.device)):
            model.generate(
                input_ids=ids, attention_mask=mask, **{**self.kwargs, "max_new_tokens": 2}
            )

    def run(self, model: nn.Module, method: str, keep_err: bool | None, strength: float | None):
        n_tokens, seconds = 0, 0.0
        for b, start in enumerate(range(0, len(self.items), self.batch_size)):
            batch = self.items[start : start + self.batch_size]
            ids, mask = self._left_padded([self.prompt_ids[p] for p, _ in batch])
            batch_seed = self.seed * 1_000_003 + b
            with torch.random.fork_rng(devices=_cuda_devices(self.device)):  # caller's RNG kept
                torch.manual_seed(batch_seed)
                t0 = time.perf_counter()
                out = model.generate(input_ids=ids, attention_mask=mask, **self.kwargs)
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                seconds += time.perf_counter() - t0
            for row, (p, j) in enumerate(batch):
                new = out[row, ids.shape[1] :].tolist()
                stop = next((i for i, t in enumerate(new) if t in self.eos), len(new))
                cont = new[:stop]
                n_tokens += min(stop + 1, len(new))  # a generated EOS cost a step too
                self.records.append(
                    {
                        "method": method,
                        "preserve_error": keep_err,
                        "strength": strength,
                        "label": label(method, keep_err),
                        "prompt_index": p,
                        "sample": j,
                        "seed": batch_seed,
                        "prompt": self.prompts[p],
                        "continuation": self.tokenizer.decode(cont, skip_special_tokens=True),
                        "n_tokens": len(cont),
                        "repetition": repeated_ngram_share(cont, 3),
                        "_ids": cont,
                    }
                )
        self.timing[(method, keep_err, strength)] = (n_tokens, seconds)

    def _left_padded(self, seqs: list[list[int]]) -> tuple[Tensor, Tensor]:
        width = max(map(len, seqs))
        ids = torch.full((len(seqs), width), self.pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, s in enumerate(seqs):
            ids[r, width - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[r, width - len(s) :] = 1
        return ids.to(self.device), mask.to(self.device)


# -- small helpers -----------------------------------------------------------------------
def _embedder_for(embedder: Embedder | None, scores: Any) -> tuple[Any, str]:
    """The given embedder, else the one the scores were fitted with, else the default."""
    if embedder is not None:
        return load_embedder(embedder, None)
    name = getattr(scores, "embedder", None) or DEFAULT_EMBEDDER
    try:
        return load_embedder(name, None)
    except Exception as err:  # e.g. the scores were fitted with a plain callable
        raise ValueError(
            f"Cannot load the embedder the scores were fitted with ({name!r}); pass embedder=."
        ) from err


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def _ids(tokenizer: Any, value: str | TokenIds, special: bool) -> list[int]:
    if isinstance(value, str):
        return list(tokenizer(value, add_special_tokens=special)["input_ids"])
    return [int(t) for t in value]


def _pad_id(tokenizer: Any) -> int:
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return 0


def _eos_ids(model: nn.Module, tokenizer: Any) -> set[int]:
    found = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    found = found if isinstance(found, list) else [found]
    return {int(t) for t in [*found, getattr(tokenizer, "eos_token_id", None)] if t is not None}


def _device(model: nn.Module) -> torch.device:
    param = next((p for p in model.parameters() if p.device.type != "meta"), None)
    return param.device if param is not None else torch.device("cpu")


def _cuda_devices(device: torch.device) -> list[int]:
    return [device.index or 0] if device.type == "cuda" else []
