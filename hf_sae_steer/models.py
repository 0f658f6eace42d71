"""Hugging Face models and tokenizers: loading them for steering, and the facts the rest of the
library reads off them (device, hidden size, context length, pad and EOS ids, name)."""

from __future__ import annotations

import hashlib
import weakref
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import nn

# Elements copied to the CPU at a time while hashing weights: bounds the copy, not the speed.
HASH_PIECE = 1 << 24
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_TOKEN_CHARS: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


def load_model(
    name_or_path: str, *, device: str | None = None, dtype: str | torch.dtype | None = None
) -> tuple[nn.Module, Any]:
    """A causal LM and its tokenizer, ready for batched generation (left padding, a pad token)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"Unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}.")
        dtype = DTYPES[dtype]
    where = check_device(device) if device is not None else None
    local = Path(name_or_path).expanduser()
    if name_or_path.startswith((".", "/", "~")) or local.exists():
        if not (local / "config.json").is_file():
            raise FileNotFoundError(f"Model folder {local} does not exist or has no config.json.")
        name_or_path = str(local)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except OSError as error:
        raise OSError(
            f"Cannot load the tokenizer of {name_or_path!r}: not a local folder, and not "
            f"fetchable from the Hugging Face Hub or its cache ({_first_line(error)})."
        ) from error
    try:
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype or torch.float32)
    except OSError as error:
        raise OSError(
            f"Cannot load model {name_or_path!r}: not a local folder, and not fetchable "
            f"from the Hugging Face Hub or its cache ({_first_line(error)})."
        ) from error
    except SafetensorError as error:  # truncated or corrupt weights
        raise ValueError(
            f"The weights of model {name_or_path!r} are corrupt or truncated "
            f"({_first_line(error)}); download or save the model again."
        ) from error
    if where is not None:
        model.to(where)
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # decoder-only models continue from the right edge
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch.device, when this machine has it; one clear error otherwise."""
    try:
        where = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(
            f"Unknown device {device!r}; use cpu, cuda, cuda:N or mps ({_first_line(error)})."
        ) from None
    if where.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"Device {device!r}: CUDA is not available here; use --device cpu.")
        if where.index is not None and where.index >= torch.cuda.device_count():
            raise ValueError(
                f"Device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)."
            )
    if where.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"Device {device!r}: MPS is not available here; use --device cpu.")
    return where


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def model_device(model: nn.Module) -> torch.device:
    """Where the model's first materialised parameter lives (CPU for a parameterless model)."""
    param = next((p for p in model.parameters() if p.device.type != "meta"), None)
    return param.device if param is not None else torch.device("cpu")


def module_device(module: nn.Module) -> torch.device | None:
    """Where a module's first materialised parameter lives; None when it has none here (no
    parameters, or offloaded to disk by accelerate and loaded only while it runs)."""
    param = next((p for p in module.parameters() if p.device.type != "meta"), None)
    return param.device if param is not None else None


def hidden_size(model: nn.Module) -> int | None:
    """The residual stream's width, from the config (text config of multimodal models)."""
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    for name in ("hidden_size", "n_embd", "d_model"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


def context_length(model: nn.Module, tokenizer: Any = None) -> int | None:
    """The longest sequence the model takes (its position table), else the tokenizer's limit."""
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    value = getattr(tokenizer, "model_max_length", None)
    return value if isinstance(value, int) and 0 < value < 10**7 else None


def longest_token_chars(tokenizer: Any) -> int | None:
    """The most characters of text one token stands for: the longest vocabulary entry (a byte-
    level entry has one character per byte, so never fewer than the text it encodes); None when
    the tokenizer has no vocabulary to read. Computed once per tokenizer."""
    try:
        return _TOKEN_CHARS[tokenizer]
    except (KeyError, TypeError):
        pass
    try:
        longest = max(map(len, tokenizer.get_vocab()), default=1)
    except (AttributeError, TypeError, NotImplementedError):
        return None
    try:
        _TOKEN_CHARS[tokenizer] = longest
    except TypeError:  # not weakly referable: computed again next time
        pass
    return longest


def max_prompt_chars(model: nn.Module, tokenizer: Any, new_tokens: int = 0) -> int | None:
    """A length in characters past which a prompt cannot fit the model's context with
    ``new_tokens`` more, whatever its text: checked before tokenizing, which costs memory in
    proportion to the text (a 40 MB prompt took 5.7 GB). None when either figure is unknown."""
    limit, per_token = context_length(model, tokenizer), longest_token_chars(tokenizer)
    if limit is None or per_token is None:
        return None
    return max(limit - new_tokens, 0) * max(per_token, 1)


def pad_token_id(tokenizer: Any) -> int:
    """The pad id, else the EOS id, else 0 (padding is always masked out)."""
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return 0


def eos_token_ids(model: nn.Module, tokenizer: Any) -> set[int]:
    """Every id that ends a generation: the generation config's and the tokenizer's."""
    found = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    found = found if isinstance(found, list) else [found]
    return {int(t) for t in [*found, getattr(tokenizer, "eos_token_id", None)] if t is not None}


def model_id(model: nn.Module) -> str | None:
    """The id or path the model was loaded from, when transformers recorded it."""
    return getattr(getattr(model, "config", None), "_name_or_path", None) or None


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 of the model's weights: every parameter's and persistent buffer's name, dtype,
    shape and bytes (a tied tensor once). Where the model loaded it from plays no part; weights
    that accelerate keeps off the model (``device="meta"``) count by name, dtype and shape only.

    Reads every weight once (about 1.5 s per GB on a 2-core CPU): what a checkpoint needs to
    tell the model it was written with from another one saved at the same path.
    """
    h = hashlib.sha256()
    seen: dict[int, str] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        h.update(f"\0{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        if id(tensor) in seen:  # tied weights (an LM head that is the embedding)
            h.update(f"tied to {seen[id(tensor)]}".encode())
            continue
        seen[id(tensor)] = name
        if tensor.device.type == "meta":
            continue
        flat = tensor.detach().reshape(-1)
        for start in range(0, flat.numel(), HASH_PIECE):
            piece = flat[start : start + HASH_PIECE].to("cpu").contiguous()
            h.update(memoryview(piece.view(torch.uint8).numpy()))
    return h.hexdigest()[:16]


def weights_dtype(model: nn.Module) -> str | None:
    """The dtype of the model's first floating-point weight (``torch.float32``), if any."""
    for tensor in model.parameters():
        if tensor.is_floating_point():
            return str(tensor.dtype)
    return None
