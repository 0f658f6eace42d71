"""One-call recipes over the API: load a model, load scores, continue prompts, compare methods,
find what fires a latent. The CLI is a thin layer over these."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from hf_sae_steer.sae.base import SAE
from hf_sae_steer.scoring import FeatureScores
from hf_sae_steer.sites import Site, find_layout, run_to_site
from hf_sae_steer.steered import SteeredModel

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_model(
    name_or_path: str, *, device: str | None = None, dtype: str | torch.dtype | None = None
) -> tuple[nn.Module, Any]:
    """A causal LM and its tokenizer, ready for batched generation (left padding, a pad token)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"Unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}.")
        dtype = DTYPES[dtype]
    local = Path(name_or_path).expanduser()
    if name_or_path.startswith((".", "/", "~")) or local.exists():
        if not (local / "config.json").is_file():
            raise FileNotFoundError(f"Model folder {local} does not exist or has no config.json.")
        name_or_path = str(local)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype or torch.float32)
    except OSError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise OSError(
            f"Cannot load model {name_or_path!r}: not a local folder, and not fetchable "
            f"from the Hugging Face Hub or its cache ({first})."
        ) from error
    if device is not None:
        model.to(device)
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # decoder-only models continue from the right edge
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def load_scores(spec: str | Path, revision: str | None = None) -> FeatureScores:
    """Scores from an artifact folder, a Hub repo id, or the reference demo's CSV format."""
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".csv":
        if not path.is_file():
            raise FileNotFoundError(f"Scores file {path} does not exist.")
        return FeatureScores.from_csv(path)
    if path.exists() or str(spec).startswith((".", "/", "~")):
        if not path.is_dir():
            raise FileNotFoundError(f"Scores folder {path} does not exist.")
        return FeatureScores.from_pretrained(path)
    return FeatureScores.from_pretrained(str(spec), revision=revision)


def continue_prompts(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = 50,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = False,
) -> list[str]:
    """Continuations (new text only) of ``prompts``; ``model`` may be a :class:`SteeredModel`.

    Every batch is seeded from ``seed``, so a base and a steered run draw the same random numbers.
    """
    device = next(model.parameters()).device
    options: dict[str, Any] = dict(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        pad_token_id=tokenizer.pad_token_id,
    )
    if do_sample:
        options.update(temperature=temperature, top_k=top_k, top_p=top_p)
    texts: list[str] = []
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc="generate", disable=not progress, leave=False):
        batch = list(prompts[start : start + batch_size])
        enc = tokenizer(batch, return_tensors="pt", padding=True).to(device)
        torch.manual_seed(seed + start)
        out = model.generate(**enc, **options)
        new = out[:, enc["input_ids"].shape[1] :]
        texts += tokenizer.batch_decode(new, skip_special_tokens=True)
    return texts


def compare_methods(
    model: nn.Module,
    tokenizer: Any,
    sae: SAE,
    scores: Any,
    prompts: Sequence[str],
    methods: Sequence[str] = ("swap",),
    *,
    layer: int | None = None,
    site: str | None = None,
    strength: float = 1.0,
    preserve_error: bool = False,
    positions: str = "all",
    allow_score_mismatch: bool = False,
    include_base: bool = True,
    **generation: Any,
) -> list[dict[str, str]]:
    """Base and steered continuations side by side: one row per prompt, one key per method
    (``"base"`` too unless ``include_base=False``); every run draws the same random numbers."""
    rows: list[dict[str, str]] = [{"prompt": p} for p in prompts]
    if include_base:
        for row, text in zip(
            rows, continue_prompts(model, tokenizer, prompts, **generation), strict=True
        ):
            row["base"] = text
    for method in methods:
        with SteeredModel(
            model,
            sae,
            layer,
            site,
            method,
            scores,
            strength,
            preserve_error,
            positions=positions,
            allow_score_mismatch=allow_score_mismatch,
        ) as steered:
            texts = continue_prompts(steered, tokenizer, prompts, **generation)
        for row, text in zip(rows, texts, strict=True):
            row[method] = text
    return rows


@dataclass
class LatentExample:
    """Where a latent fired most: the prompt, the token at that position, the activation."""

    prompt: str
    token: str
    position: int
    activation: float


@torch.inference_mode()
def latent_examples(
    model: nn.Module,
    tokenizer: Any,
    sae: SAE,
    prompts: Sequence[str],
    latents: Sequence[int],
    *,
    layer: int | None = None,
    site: str | None = None,
    per_latent: int = 3,
    batch_size: int = 16,
    max_length: int = 256,
    progress: bool = False,
) -> dict[int, list[LatentExample]]:
    """For each latent, the ``per_latent`` prompts whose tokens fire it most (one per prompt)."""
    layout = find_layout(model)
    where = Site(
        layer if layer is not None else _required(sae.cfg.layer, "layer"),
        site or sae.cfg.site or "resid_post",
    )
    layout.check_layer(where.layer)
    index = torch.as_tensor(list(latents), dtype=torch.long)
    device = next(model.parameters()).device
    placed = copy.deepcopy(sae).to(device) if sae.device != device else sae
    # (activation, latent slot, prompt index, position in the prompt, token id)
    best: list[tuple[float, int, int, int, int]] = []
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc="inspect", disable=not progress, leave=False):
        batch = list(prompts[start : start + batch_size])
        enc = tokenizer(
            batch, return_tensors="pt", padding=True, truncation=True, max_length=max_length
        ).to(device)
        hidden = run_to_site(model, layout, where, **enc)
        acts = placed.encode(hidden.to(placed.dtype))[..., index.to(device)]  # [b, t, m]
        mask = enc["attention_mask"]
        acts = acts.masked_fill(mask.unsqueeze(-1) == 0, 0.0).float().cpu()
        peak, pos = acts.max(dim=1)  # per prompt and latent
        left_pad = (mask == 0).sum(dim=1).cpu() if tokenizer.padding_side == "left" else None
        ids = enc["input_ids"].cpu()
        for b, slot in (peak > 0).nonzero().tolist():
            t = int(pos[b, slot])
            real = t - int(left_pad[b]) if left_pad is not None else t
            best.append((float(peak[b, slot]), slot, start + b, real, int(ids[b, t])))
    out: dict[int, list[LatentExample]] = {int(i): [] for i in index}
    for value, slot, p, real, token_id in sorted(best, reverse=True):
        examples = out[int(index[slot])]
        if len(examples) < per_latent:
            examples.append(LatentExample(prompts[p], tokenizer.decode([token_id]), real, value))
    return out


def _required(value: int | None, name: str) -> int:
    if value is None:
        raise ValueError(f"The SAE does not say its {name}; pass {name}=.")
    return value
