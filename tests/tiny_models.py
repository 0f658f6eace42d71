"""Tiny config-built models for the tests."""

from __future__ import annotations

import torch


def tiny_gpt2(vocab_size: int = 400, n_layer: int = 3, d: int = 32, seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        n_layer=n_layer,
        n_embd=d,
        n_head=4,
        n_positions=128,
        vocab_size=vocab_size,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    return GPT2LMHeadModel(config).eval()


def tiny_topk_sae(d: int = 32, n: int = 48, layer: int = 1, k: int = 6, seed: int = 1):
    """A random TopK SAE at ``resid_post`` of ``layer`` (built in memory)."""
    from hf_sae_steer.sae import SAEConfig, build_sae

    g = torch.Generator().manual_seed(seed)
    state = {
        "W_enc": torch.randn(d, n, generator=g) / d**0.5,
        "b_enc": torch.randn(n, generator=g) * 0.1,
        "W_dec": torch.randn(n, d, generator=g) / n**0.5,
        "b_dec": torch.randn(d, generator=g) * 0.1,
    }
    cfg = SAEConfig(d_in=d, d_sae=n, activation="topk", k=k, layer=layer, site="resid_post")
    return build_sae(cfg, state)


def letters(texts: list[str]) -> torch.Tensor:
    """A tiny deterministic sentence embedder: letter frequencies."""
    alphabet = "abcdefghijklmnopqrstuvwxyz "
    return torch.tensor([[t.lower().count(c) / max(len(t), 1) for c in alphabet] for t in texts])


def varied_prompts(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct short prompts of varied length, from a fixed word list."""
    words = (
        "the patient doctor fever river bridge steel orchestra symphony farmer wheat cough "
        "infection heart lungs valley sea canyon spring played treated built examined"
    ).split()
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        size = 3 + int(torch.randint(0, 12, (1,), generator=g))
        picks = torch.randint(0, len(words), (size,), generator=g).tolist()
        out.append(f"{i} " + " ".join(words[j] for j in picks) + ".")
    return out
