"""What fires a latent: the prompts and tokens where it is most active."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from hf_sae_steer.models import model_device
from hf_sae_steer.sae.base import SAE
from hf_sae_steer.sites.hooks import run_to_site
from hf_sae_steer.sites.layouts import find_layout
from hf_sae_steer.sites.resolve import Located, resolve_site


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
    scores: Located | None = None,
    per_latent: int = 3,
    batch_size: int = 16,
    max_length: int = 256,
    progress: bool = False,
) -> dict[int, list[LatentExample]]:
    """For each latent, the ``per_latent`` prompts whose tokens fire it most (one per prompt).

    The site is resolved as everywhere (:func:`~hf_sae_steer.sites.resolve.resolve_site`): the
    arguments, then ``scores`` (an artifact), then where the SAE was trained.
    """
    layout = find_layout(model)
    where = resolve_site(layout, layer, site, scores=scores, trained=sae.cfg)
    index = torch.as_tensor(list(latents), dtype=torch.long)
    device = model_device(model)
    placed = sae.placed(device)
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

