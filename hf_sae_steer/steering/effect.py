"""What a steering does, in words: the tokens it raises and lowers most, by two measures.

* **Next token** (:func:`next_token_effect`): the change of the next-token log-probability,
  ``log_softmax(steered logits) - log_softmax(unsteered logits)``, averaged over every real
  position of a few neutral prompts (every position, not only the last: the same two batched
  forward passes then give several times more contexts to average over). It is what the
  steering does to the model's output, with every later block's reaction included. A steering
  limited to ``positions="generated"`` is measured as if every position were generated (a
  plain forward pass has no generated positions); ``"prompt"`` and ``"all"`` as they are.
* **Logit lens** (:func:`logit_lens`), as Neuronpedia shows per feature: a direction of the
  residual stream read straight through the model's final norm and unembedding, skipping the
  blocks after the site. The direction is scaled to unit RMS and passed through the final norm
  module itself (so LayerNorm centres it and RMSNorm keeps it, each with its own weight, Gemma's
  ``1 + w`` included), minus what the norm and head give a zero stream (their biases, which
  belong to no direction): the logits of a stream that points along the direction alone. It is
  shown for the steering's added vector (``add``, ``clamp``, ``vector``; for ``swap``/``weight``,
  which add no constant, the score-weighted sum of the top latents' decoder rows) and for each
  chosen latent's decoder row.

Only token ids the tokenizer knows are ranked (models pad their vocabulary past it).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from hf_sae_steer.models import model_device, pad_token_id
from hf_sae_steer.scores.effect import SteeringEffect, TokenEffect
from hf_sae_steer.scores.record import FeatureScores
from hf_sae_steer.sites.layouts import find_layout
from hf_sae_steer.steering.interventions import Intervention
from hf_sae_steer.steering.steered import SteeredModel

# Neutral sentence openings the next-token effect is averaged over by default: no topic, and
# none of the calibration's prompts, so the effect is not read off what the strength was tuned on.
EFFECT_PROMPTS = (
    "The house", "A man walked", "It was a", "On the table there is", "The city of",
    "We talked about the", "Her first", "The weather today is", "There are many", "I think that",
    "The small boat", "After the meeting, the", "This is a story about", "His brother was",
    "The road to the", "Every morning she",
)  # fmt: skip
TOP = 20  # tokens per list (the topic's words are read off the first list)
ROWS = 5  # chosen latents whose decoder rows get a logit lens of their own
# Attribute names of the final norm on the module that holds the decoder blocks.
_FINAL_NORMS = ("ln_f", "norm", "final_layer_norm", "final_layernorm", "final_norm", "norm_f")
_WORD = re.compile(r"[^\W\d_]{3,}")  # a word-like token: three letters or more
_WHOLE_WORD = re.compile(r"[^\W\d_]{3,}$")
# Candidates searched for whole-word tokens (by value): enough to find ``top`` of them in
# any vocabulary seen so far, without decoding all of a 256k vocabulary.
_WORD_CANDIDATES = 2000


def is_word(token: str) -> bool:
    """Whether a token's text reads as (part of) a word: three letters or more."""
    return bool(_WORD.search(token))


def starts_word(tokenizer: Any, token_id: int) -> bool:
    """Whether a token begins a word: its text (or, for SentencePiece, whose decoder drops
    it, its piece) starts with a space marker, followed by three letters or more."""
    text = _text(tokenizer, token_id)
    if not text[:1].isspace():
        piece = tokenizer.convert_ids_to_tokens(token_id)
        if not (isinstance(piece, str) and piece[:1] in ("\u2581", "\u0120")):
            return False
    return bool(_WHOLE_WORD.match(text.strip()))


def steering_effect(
    steered: SteeredModel,
    tokenizer: Any,
    prompts: Sequence[str] | None = EFFECT_PROMPTS,
    *,
    top: int = TOP,
    rows: int = ROWS,
    batch_size: int = 16,
) -> SteeringEffect:
    """The ``top`` tokens ``steered`` raises and lowers most: over ``prompts`` (``None``: skip
    the next-token effect, which needs forward passes) and by the logit lens of every site
    (its added vector, then the decoder rows of up to ``rows`` chosen latents)."""
    if all(step.is_identity for step in steered.interventions):
        return SteeringEffect(None, [])  # it changes nothing: nothing to measure
    nxt = None
    if prompts is not None:
        nxt = next_token_effect(steered, tokenizer, prompts, top=top, batch_size=batch_size)
    lens = []
    for site, step in zip(steered.sites, steered.interventions, strict=True):
        where = f" at {site.hook_name}" if len(steered.sites) > 1 else ""
        vectors, labels = steering_directions(step, rows)
        if labels:
            labels = [label + where for label in labels]
            lens += logit_lens(steered.model, tokenizer, vectors, labels, top=top)
    return SteeringEffect(nxt, lens)


def effect_of(
    model: nn.Module,
    tokenizer: Any,
    sae: Any,
    prompts: Sequence[str] | None = EFFECT_PROMPTS,
    *,
    top: int = TOP,
    rows: int = ROWS,
    batch_size: int = 16,
    **steering: Any,
) -> SteeringEffect:
    """:func:`steering_effect` of ``SteeredModel(model, sae, **steering)``, built for the
    measurement and removed after it (``model`` must not be steered already)."""
    with SteeredModel(model, sae, **steering) as steered:
        return steering_effect(
            steered, tokenizer, prompts, top=top, rows=rows, batch_size=batch_size
        )


def concept_effect(
    scores: FeatureScores,
    model: nn.Module | None = None,
    tokenizer: Any = None,
    sae: Any = None,
    *,
    n: int = 10,
) -> dict[str, Any] | None:
    """A short JSON listing of what an artifact's recommended steering does in words (for a
    server's list of concepts, :meth:`SteeringEffect.summary`): the effect the artifact
    records; else, given ``model``, ``tokenizer`` and ``sae``, measured now (``model`` must not
    be steered); else None."""
    effect = scores.effect
    if effect is None and model is not None and tokenizer is not None and sae is not None:
        effect = effect_of(model, tokenizer, sae, scores=scores)
    return None if effect is None else effect.summary(n)


@torch.no_grad()
def next_token_effect(
    steered: SteeredModel,
    tokenizer: Any,
    prompts: Sequence[str] = EFFECT_PROMPTS,
    *,
    top: int = TOP,
    batch_size: int = 16,
) -> TokenEffect:
    """Steered minus unsteered next-token log-probabilities, averaged over every real position
    of ``prompts`` (right-padded batches, padding masked): the ``top`` tokens each way."""
    rows = [list(ids) for ids in tokenizer(list(prompts), add_special_tokens=True)["input_ids"]]
    rows = [ids for ids in rows if ids]
    if not rows:
        raise ValueError("The next-token effect needs at least one non-empty prompt.")
    device, pad = model_device(steered.model), pad_token_id(tokenizer)
    total: Tensor | None = None
    count = 0
    generated = {spec.positions for spec in steered.specs}
    # A plain forward pass is all prompt: pin it as generated for positions="generated".
    pin = 0 if "generated" in generated and "prompt" not in generated else None
    for start in range(0, len(rows), max(1, batch_size)):
        batch = rows[start : start + batch_size]
        width = max(map(len, batch))
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, seq in enumerate(batch):
            ids[r, : len(seq)] = torch.tensor(seq)
            mask[r, : len(seq)] = 1
        ids, mask = ids.to(device), mask.to(device)
        with steered.tracker.prompt(pin):
            steered_lp = steered(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)
        with steered.disabled():
            base_lp = steered(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)
        keep = mask.bool()
        change = (steered_lp - base_lp)[keep].double().sum(dim=0).cpu()
        total = change if total is None else total + change
        count += int(keep.sum())
    assert total is not None
    mean = total / count
    kind = "neutral prompts" if tuple(prompts) == EFFECT_PROMPTS else "prompts"
    label = f"next token ({len(rows)} {kind}, {count} positions; mean Δ log-prob)"
    return _ranked(label, mean, tokenizer, top)


@torch.no_grad()
def logit_lens(
    model: nn.Module,
    tokenizer: Any,
    vectors: Tensor,
    labels: Sequence[str],
    *,
    top: int = TOP,
) -> list[TokenEffect]:
    """The logit lens of each row of ``vectors`` (``[m, d_model]`` residual-stream directions):
    the tokens a stream pointing along it alone raises and lowers most (module docstring)."""
    logits = lens_logits(model, vectors)
    return [_ranked(label, row, tokenizer, top) for label, row in zip(labels, logits, strict=True)]


def lens_logits(model: nn.Module, vectors: Tensor) -> Tensor:
    """``[m, vocab]`` float64: each direction, scaled to unit RMS, through the final norm and
    the unembedding, minus what they give a zero stream."""
    head = _unembedding(model)
    norm = final_norm(model)
    param = next((p for p in head.parameters()), None)
    device = param.device if param is not None else model_device(model)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    x = torch.as_tensor(vectors).detach().float()
    if x.ndim == 1:
        x = x[None]
    rms = x.pow(2).mean(dim=-1, keepdim=True).sqrt()
    x = x / torch.where(rms > 0, rms, torch.ones_like(rms))
    x = torch.cat([x, torch.zeros_like(x[:1])]).to(device, dtype)  # the last row: no direction
    if norm is not None:
        x = norm(x)
    project = getattr(_decoder(model), "project_out", None)
    if isinstance(project, nn.Module):  # OPT-350m: the stream is wider than the embedding
        x = project(x)
    out = head(x).double()
    return (out[:-1] - out[-1:]).cpu()


def final_norm(model: nn.Module) -> nn.Module | None:
    """The norm applied to the residual stream before the unembedding (None: the model has
    none, or it is not under a known name on the module that holds the blocks)."""
    decoder = _decoder(model)
    for name in _FINAL_NORMS:
        module = getattr(decoder, name, None)
        if isinstance(module, nn.Module):
            return module
    return None


def steering_directions(step: Intervention, rows: int = ROWS) -> tuple[Tensor, list[str]]:
    """The directions whose logit lens describes ``step``: its added vector (``vector``; ``add``
    and ``clamp``: the decoded latents; ``swap``/``weight``: the score-weighted sum of the top
    latents' decoder rows), then the decoder rows of up to ``rows`` chosen latents, and the
    labels that say which is which. The added vector points as the strength's sign says."""
    chosen = chosen_latents(step)
    sign = -1.0 if step.strength < 0 else 1.0
    vectors: list[Tensor] = []
    labels: list[str] = []
    if step.method == "vector" and step.vector is not None:
        vectors.append(step.vector.detach().float().cpu() * sign)
        labels.append("logit lens of the steering vector")
    elif chosen and step.sae is not None:
        w_dec = step.sae.W_dec.detach().float().cpu()
        index = torch.tensor([i for i, _ in chosen])
        weight = torch.tensor([w for _, w in chosen], dtype=torch.float32)
        vectors.append((weight @ w_dec[index]) * sign)
        added = step.method in ("add", "clamp")
        what = "added vector" if added else "top latents' score-weighted rows"
        labels.append(f"logit lens of the {what} ({len(chosen)} latents)")
    if step.sae is not None:
        w_dec = step.sae.W_dec.detach().float().cpu()
        for latent, weight in sorted(chosen, key=lambda lw: -abs(lw[1]))[:rows]:
            vectors.append(w_dec[latent])
            labels.append(f"logit lens of latent {latent} (weight {weight:.3g})")
    if not vectors:
        return torch.zeros(0, 0), []
    return torch.stack(vectors), labels


def chosen_latents(step: Intervention, top_scores: int = 10) -> list[tuple[int, float]]:
    """``(latent, weight)`` of what ``step`` steers with: ``add``'s latents, ``clamp``'s clamped
    values, the ``top_scores`` highest scores of ``swap``/``weight``; plus direct edits (their
    value). Empty for ``vector``, ``orig`` and ``sae`` without edits."""
    found: dict[int, float] = {}
    code = step.latents if step.method == "add" else step.clamped
    if code is not None:
        for i, v in zip(code.indices.tolist(), code.values.tolist(), strict=True):
            found[int(i)] = found.get(int(i), 0.0) + float(v)
    elif step.method in ("swap", "weight") and step.scores is not None:
        best = torch.topk(step.scores, min(top_scores, step.scores.numel()))
        found.update(
            (int(i), float(v)) for i, v in zip(best.indices, best.values, strict=True) if v > 0
        )
    for edit in step.edits:
        found.setdefault(edit.index, edit.value)
    return list(found.items())


def _ranked(label: str, values: Tensor, tokenizer: Any, top: int) -> TokenEffect:
    known = min(values.numel(), len(tokenizer))
    values = values[:known]
    k = min(top, known)
    up = torch.topk(values, k)
    down = torch.topk(-values, k)
    candidates = torch.topk(values, min(_WORD_CANDIDATES, known)).indices.tolist()
    word_ids = [i for i in candidates if starts_word(tokenizer, i)][:top]

    def listed(ids: list[int]) -> list[tuple[str, float]]:
        return [(_text(tokenizer, i), float(values[i])) for i in ids]

    raised, lowered = up.indices.tolist(), down.indices.tolist()
    return TokenEffect(
        label, listed(raised), listed(lowered), raised, lowered, listed(word_ids), word_ids
    )


def _text(tokenizer: Any, token_id: int) -> str:
    return tokenizer.decode([token_id], skip_special_tokens=False)


def _decoder(model: nn.Module) -> nn.Module:
    return find_layout(model).decoder


def _unembedding(model: nn.Module) -> nn.Module:
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if not isinstance(head, nn.Module):
        raise ValueError(
            f"{type(model).__name__} has no output embeddings (an LM head): the logit lens and "
            "the next-token effect need a causal LM (AutoModelForCausalLM), not its bare decoder."
        )
    return head
