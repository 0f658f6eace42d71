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
