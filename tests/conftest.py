"""Shared fixtures: a real (tiny, trained here) byte-level BPE tokenizer and tiny models."""

from __future__ import annotations

import os

import pytest
import torch
from tiny_models import tiny_gpt2

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)  # tiny models: threads only add overhead, and xdist runs 2 workers

CORPUS = [
    "The patient was treated for a fever and a persistent cough.",
    "A doctor examined the heart and lungs of the child.",
    "The river flows through the valley towards the sea.",
    "Engineers built a bridge of steel across the canyon.",
    "Symptoms of the infection include pain, fever and fatigue.",
    "The orchestra played a symphony in the old concert hall.",
    "Antibiotics are used to treat bacterial infections.",
    "A farmer planted wheat and barley in the spring.",
]


@pytest.fixture(scope="session")
def tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(CORPUS * 4, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    tok.padding_side = "left"
    return tok


@pytest.fixture
def gpt2(tokenizer):
    return tiny_gpt2(len(tokenizer))
