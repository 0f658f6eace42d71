"""OpenAI ``sparse_autoencoder`` checkpoints (GPT-2 small v1, v4, v5_32k, v5_128k).

A checkpoint is a plain state dict: ``pre_bias [d]``, ``encoder.weight [n, d]``,
``latent_bias [n]``, ``decoder.weight [d, n]``, three statistics buffers (ignored), the
activation's class name (``"TopK"`` or ``"ReLU"``; absent means ReLU) and its state
(``{"k": 32, "postact_fn": "ReLU"}``). TopK checkpoints layer-norm their input (docs/method.md §1).
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hf_sae_steer.sae.base import SAE, build_sae, check_weights
from hf_sae_steer.sae.config import SAEConfig
from hf_sae_steer.sites.names import OPENAI_LOCATIONS

BLOB_ROOT = "az://openaipublic/sparse-autoencoder/gpt2-small"
N_LAYERS = 12  # gpt2-small
MODEL_NAME = "gpt2"
FAMILIES: dict[str, str] = {"v1": "", "v4": "_v4", "v5_32k": "_v5_32k", "v5_128k": "_v5_128k"}
_V1_LOCATIONS = ("mlp_post_act", "resid_delta_mlp")
_V5_LOCATIONS = ("resid_delta_attn", "resid_delta_mlp", "resid_post_attn", "resid_post_mlp")
LOCATIONS: dict[str, tuple[str, ...]] = {
    "v1": _V1_LOCATIONS,
    "v4": _V1_LOCATIONS,
    "v5_32k": _V5_LOCATIONS,
    "v5_128k": _V5_LOCATIONS,
}
_PATH_RE = re.compile(
    r"(?P<location>" + "|".join(OPENAI_LOCATIONS) + r")(?P<suffix>_v4|_v5_32k|_v5_128k)?"
    r"/autoencoders/(?P<layer>\d+)\.pt$"
)
_NEEDS_CODE_RE = re.compile(r"GLOBAL|unrecognized function|allowlisted")
_REQUIRED = ("pre_bias", "encoder.weight", "latent_bias", "decoder.weight")


# -- names and URLs -----------------------------------------------------------------------
def openai_url(family: str, location: str, layer: int) -> str:
    """The published ``az://`` URL of one OpenAI SAE; validates all three parts."""
    if family not in FAMILIES:
        raise ValueError(f"Unknown OpenAI SAE family {family!r}; use one of {', '.join(FAMILIES)}.")
    if location not in LOCATIONS[family]:
        raise ValueError(
            f"OpenAI family {family} has no location {location!r}; "
            f"use one of {', '.join(LOCATIONS[family])}."
        )
    if not 0 <= layer < N_LAYERS:
        raise ValueError(f"OpenAI SAEs cover gpt2-small layers 0..{N_LAYERS - 1}, got {layer}.")
    return f"{BLOB_ROOT}/{location}{FAMILIES[family]}/autoencoders/{layer}.pt"


def parse_openai_name(name: str) -> tuple[str, str, int]:
    """Split ``[openai:]<family>/<location>/<layer>`` and validate it."""
    body = name.removeprefix("openai:")
    parts = body.split("/")
    if len(parts) != 3 or not parts[2].strip().isdigit():
        raise ValueError(
            f"Bad OpenAI SAE name {name!r}; expected openai:<family>/<location>/<layer>, "
            "e.g. openai:v5_32k/resid_post_mlp/9."
        )
    family, location, layer = parts[0], parts[1], int(parts[2])
    openai_url(family, location, layer)
    return family, location, layer


# -- download cache -----------------------------------------------------------------------
def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The download cache: ``cache_dir``, ``$HF_SAE_STEER_CACHE`` or ``~/.cache/hf_sae_steer``."""
    if cache_dir is None:
        cache_dir = os.environ.get("HF_SAE_STEER_CACHE") or Path.home() / ".cache" / "hf_sae_steer"
    return Path(cache_dir).expanduser()


def cache_path(url: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The local file that mirrors ``url`` (``az://acct/x.pt`` -> ``<root>/az/acct/x.pt``)."""
    parsed = urllib.parse.urlsplit(url)
    parts = [p for p in parsed.path.split("/") if p]
    if not parsed.scheme or not parsed.netloc or not parts or ".." in parts:
        raise ValueError(f"Cannot cache URL {url!r}: expected scheme://host/path.")
    return cache_root(cache_dir).joinpath(parsed.scheme, parsed.netloc, *parts)


def _fetch(url: str, dest: str) -> None:
    """Copy ``url`` to the local file ``dest`` (blob stores through blobfile)."""
    host = urllib.parse.urlsplit(url).netloc
    if url.startswith(("az://", "gs://")) or host.endswith(
        (".blob.core.windows.net", "storage.googleapis.com")
    ):
        import blobfile

        # Bounded retries: blobfile's default retries forever when the network is down.
        context = blobfile.create_context(retry_limit=3, connect_timeout=10, read_timeout=60)
        context.copy(url, dest, overwrite=True)
        return
    with urllib.request.urlopen(url, timeout=60) as src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out)


def _offline() -> bool:
    return any(
        os.environ.get(name, "").lower() in ("1", "true", "yes", "on")
        for name in ("HF_SAE_STEER_OFFLINE", "HF_HUB_OFFLINE")
    )


def download_cached(url: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Download ``url`` once into the cache and return the local path."""
    dest = cache_path(url, cache_dir)
    if dest.is_file():
        return dest
    if _offline():
        raise FileNotFoundError(
            f"{url} is not in the cache ({dest}) and downloads are off (HF_HUB_OFFLINE or "
            "HF_SAE_STEER_OFFLINE is set); copy the file there or pass a local path."
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    os.close(fd)
    try:
        try:
            _fetch(url, tmp)
        except Exception as error:
            raise OSError(
                f"Could not download {url} ({type(error).__name__}: {error}); without network, "
                f"put the file at {dest} or pass a local path."
            ) from error
        # A rename is atomic: a crash never leaves a half-written file under the final name.
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return dest


# -- reading ------------------------------------------------------------------------------
def read_openai_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``torch.load`` with ``weights_only=True``; never executes pickled code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SAE checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # Globals, reduce calls and object builds are code; a bad opcode is just corruption.
        if _NEEDS_CODE_RE.search(str(e)):
            raise ValueError(
                f"Refused to load {path}: it needs unpickling of code, which would execute "
                "pickled code (torch.load weights_only=True). Only plain state dicts are read."
            ) from None
        raise ValueError(f"SAE checkpoint {path} is corrupt or not a torch file: {e}") from e
    except Exception as e:  # truncated zips, garbage and empty files fail in many ways
        raise ValueError(f"SAE checkpoint {path} is corrupt or not a torch file: {e}") from e
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not an OpenAI SAE state dict.")
    return state


def _activation(state: dict[str, Any], source: str) -> tuple[str, int | None]:
    name = state.get("activation", "ReLU")
    if name == "ReLU":
        return "relu", None
    if name != "TopK":
        raise ValueError(f"{source}: unsupported OpenAI activation {name!r}; use TopK or ReLU.")
    act_state = state.get("activation_state_dict") or {}
    postact = act_state.get("postact_fn", "ReLU")
    if postact != "ReLU":
        raise ValueError(f"{source}: unsupported TopK postact_fn {postact!r}; only ReLU.")
    k = act_state.get("k")
    if isinstance(k, Tensor) and k.numel() == 1:
        k = int(k.item())
    if not isinstance(k, int) or isinstance(k, bool):
        raise ValueError(f"{source}: TopK activation without an integer k (got {k!r}).")
    return "topk", k


def _where_from_path(source: str) -> tuple[str | None, int | None]:
    """``(location, layer)`` when ``source`` follows the published layout."""
    m = _PATH_RE.search(source.replace("\\", "/"))
    return (m["location"], int(m["layer"])) if m else (None, None)


def openai_state_to_sae(
    state: dict[str, Any],
    *,
    source: str = "<state dict>",
    location: str | None = None,
    layer: int | None = None,
) -> SAE:
    """Convert an OpenAI state dict into an :class:`SAE` (SAELens layout, transposed)."""
    weights = {k: state[k] for k in _REQUIRED if k in state}
    if "decoder.weight" not in weights and "decoder.linear.weight" in state:
        weights["decoder.weight"] = state["decoder.linear.weight"].T  # tied decoder
    missing = [k for k in _REQUIRED if k not in weights]
    if missing:
        raise ValueError(f"{source}: not an OpenAI SAE state dict, it lacks {', '.join(missing)}.")
    bad = [k for k, v in weights.items() if not isinstance(v, Tensor)]
    if bad:
        raise ValueError(f"{source}: {', '.join(bad)} must be tensors.")
    try:
        check_weights(weights)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None
    enc = weights["encoder.weight"]
    if enc.ndim != 2:
        raise ValueError(f"{source}: encoder.weight must be 2-D [n, d], got {tuple(enc.shape)}.")
    n, d = enc.shape
    expected = {"pre_bias": (d,), "latent_bias": (n,), "decoder.weight": (d, n)}
    for key, shape in expected.items():
        if tuple(weights[key].shape) != shape:
            raise ValueError(
                f"{source}: {key} has shape {tuple(weights[key].shape)}, expected {shape} "
                f"for encoder.weight {tuple(enc.shape)}."
            )
    activation, k = _activation(state, source)
    site = None
    extra: dict[str, Any] = {"format": "openai"}
    if location is not None:
        site = OPENAI_LOCATIONS[location]
        extra["location"] = location
        if site is None:
            extra["note"] = (
                f"{location} is the MLP hidden activation (d={d}), a site that cannot be hooked."
            )
            if layer is not None:
                extra["hook_name"] = f"blocks.{layer}.mlp.hook_post"
    try:
        cfg = SAEConfig(
            d_in=d,
            d_sae=n,
            activation=activation,  # type: ignore[arg-type]
            k=k,
            # OpenAI's own loader turns LN on exactly for TopK checkpoints.
            normalize_activations="layer_norm" if activation == "topk" else "none",
            apply_b_dec_to_input=True,
            layer=layer,
            site=site,
            model_name=MODEL_NAME if location is not None else None,
            extra=extra,
        )
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None
    sae_state = {
        "W_enc": enc.T,
        "b_enc": weights["latent_bias"],
        "W_dec": weights["decoder.weight"].T,
        "b_dec": weights["pre_bias"],
    }
    try:
        return build_sae(cfg, sae_state)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None


def load_openai(
    path_or_url: str | os.PathLike[str], *, cache_dir: str | os.PathLike[str] | None = None
) -> SAE:
    """Load a local ``.pt`` or an ``az://`` / ``https://`` URL (downloaded once, then cached)."""
    source = os.fspath(path_or_url)
    is_url = "://" in source
    local = download_cached(source, cache_dir) if is_url else Path(source).expanduser()
    location, layer = _where_from_path(source)
    return openai_state_to_sae(
        read_openai_state(local), source=source, location=location, layer=layer
    )


def load_openai_name(name: str, *, cache_dir: str | os.PathLike[str] | None = None) -> SAE:
    """Load ``openai:<family>/<location>/<layer>`` from OpenAI's public blob store."""
    family, location, layer = parse_openai_name(name)
    sae = load_openai(openai_url(family, location, layer), cache_dir=cache_dir)
    sae.cfg.extra["family"] = family
    return sae
