"""``load_sae``: the single entry point that reads every supported SAE format."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from hf_sae_steer.sae.base import SAE
from hf_sae_steer.sae.gemmascope import PARAM_FILES, find_params, load_gemmascope
from hf_sae_steer.sae.openai import load_openai, load_openai_name
from hf_sae_steer.sae.saelens import load_saelens, sae_from_saelens
from hf_sae_steer.sae.saelens_format import CFG_FILENAME, WEIGHTS_FILENAME

PathLike = str | os.PathLike[str]
ACCEPTED = (
    "a local .pt file (OpenAI), a SAELens folder (cfg.json + sae_weights.safetensors), "
    "a Gemma Scope params.npz/params.safetensors file or folder, "
    "openai:<family>/<location>/<layer>, az://...pt or https://...pt, "
    "hf://<owner>/<repo>[/<path>], saelens:<release>/<sae_id>"
)
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")
_LAYOUT_FILES = (CFG_FILENAME, WEIGHTS_FILENAME, *PARAM_FILES)


def load_sae(
    spec: PathLike,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    revision: str | None = None,
    cache_dir: PathLike | None = None,
) -> SAE:
    """Load an SAE from any supported spec (see ``ACCEPTED``) and move it to ``device``/``dtype``.

    ``revision`` applies to ``hf://`` specs; ``cache_dir`` is where downloads are cached (the
    URL mirror for ``az://``/``https://``, the Hugging Face cache for ``hf://``).
    """
    text = os.fspath(spec)
    sae = _dispatch(text, revision=revision, cache_dir=cache_dir)
    sae.cfg.spec = text
    if device is not None or dtype is not None:
        sae.to(device=device, dtype=dtype)
    return sae


def _dispatch(text: str, *, revision: str | None, cache_dir: PathLike | None) -> SAE:
    if text.startswith("openai:"):
        return load_openai_name(text, cache_dir=cache_dir)
    if text.startswith(("az://", "https://", "http://")):
        if not text.split("?", 1)[0].endswith(".pt"):
            raise ValueError(f"URL specs must point at an OpenAI .pt checkpoint, got {text!r}.")
        return load_openai(text, cache_dir=cache_dir)
    if text.startswith("hf://"):
        return _load_hub(text, revision=revision, cache_dir=cache_dir)
    if text.startswith("saelens:"):
        return _load_sae_lens(text)
    path = Path(text).expanduser()
    if path.exists():
        return load_local(path)
    scheme = _SCHEME_RE.match(text)
    if scheme and not re.match(r"^[A-Za-z]:[\\/]", text):  # not a Windows drive
        raise ValueError(
            f"Unknown SAE spec scheme {scheme[1]!r} in {text!r}; accepted: {ACCEPTED}."
        )
    raise FileNotFoundError(f"SAE not found: {path} (no such file or folder)")


def load_local(path: PathLike) -> SAE:
    """Load a local SAE file or folder, picking the reader from the layout."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"SAE not found: {path} (no such file or folder)")
    if path.is_dir():
        return _load_folder(path)
    if path.suffix == ".pt":
        return load_openai(path)
    if path.name in (CFG_FILENAME, WEIGHTS_FILENAME):
        return load_saelens(path.parent)
    if path.suffix in (".npz", ".safetensors"):
        return load_gemmascope(path)
    raise ValueError(
        f"Cannot tell the SAE format of {path}: use a .pt (OpenAI), a {CFG_FILENAME} folder "
        f"(SAELens) or {' / '.join(PARAM_FILES)} (Gemma Scope)."
    )


def _load_folder(folder: Path) -> SAE:
    has_saelens = (folder / CFG_FILENAME).is_file() or (folder / WEIGHTS_FILENAME).is_file()
    params = find_params(folder)
    if has_saelens and params is not None:
        raise ValueError(
            f"{folder} holds both a SAELens SAE ({CFG_FILENAME}) and Gemma Scope "
            f"{params.name}; point at one file instead."
        )
    if has_saelens:
        return load_saelens(folder)
    if params is not None:
        return load_gemmascope(params)
    raise FileNotFoundError(
        f"No SAE in folder {folder}: expected {CFG_FILENAME} + {WEIGHTS_FILENAME} (SAELens) "
        f"or {' / '.join(PARAM_FILES)} (Gemma Scope)."
    )


# -- Hugging Face Hub ----------------------------------------------------------------------
def parse_hub_spec(spec: str) -> tuple[str, str]:
    """``hf://owner/repo/path/inside`` -> ``("owner/repo", "path/inside")``."""
    parts = [p for p in spec.removeprefix("hf://").split("/") if p]
    if len(parts) < 2:
        raise ValueError(f"Bad Hub spec {spec!r}; expected hf://<owner>/<repo>[/<path>].")
    return "/".join(parts[:2]), "/".join(parts[2:])


def _load_hub(spec: str, *, revision: str | None, cache_dir: PathLike | None) -> SAE:
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo_id, inner = parse_hub_spec(spec)
    kwargs: dict[str, Any] = {"revision": revision, "cache_dir": cache_dir}
    if Path(inner).name in (CFG_FILENAME, WEIGHTS_FILENAME):
        inner = inner.rpartition("/")[0]  # a SAELens file names its folder
    try:
        if inner.endswith((".pt", ".npz", ".safetensors")):
            return load_local(hf_hub_download(repo_id, filename=inner, **kwargs))
        prefix = f"{inner}/" if inner else ""
        # Only the files a layout needs: no sparsity logs, no nested folders.
        patterns = [prefix + name for name in _LAYOUT_FILES]
        root = snapshot_download(repo_id, allow_patterns=patterns, **kwargs)
    except (EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError) as e:
        raise FileNotFoundError(f"SAE not found on the Hub: {spec} ({e})") from e
    folder = Path(root) / inner
    if not folder.is_dir():
        raise FileNotFoundError(f"SAE not found on the Hub: {spec} (no folder {inner!r})")
    return _load_folder(folder)


# -- optional sae_lens ---------------------------------------------------------------------
def _load_sae_lens(spec: str) -> SAE:
    release, _, sae_id = spec.removeprefix("saelens:").partition("/")
    if not release or not sae_id:
        raise ValueError(f"Bad SAELens spec {spec!r}; expected saelens:<release>/<sae_id>.")
    try:
        # Imported here only: sae_lens pulls TransformerLens (seconds and hundreds of MB).
        from sae_lens import SAE as LensSAE
    except ImportError as e:
        raise ImportError(
            f"Loading {spec!r} needs the optional sae_lens package: "
            "pip install 'hf_sae_steer[saelens]'"
        ) from e
    loaded = LensSAE.from_pretrained(release=release, sae_id=sae_id, device="cpu")
    lens = loaded[0] if isinstance(loaded, tuple) else loaded  # sae_lens < 6 returns a tuple
    cfg = lens.cfg.to_dict() if hasattr(lens.cfg, "to_dict") else dict(vars(lens.cfg))
    state = {k: v.detach() for k, v in lens.state_dict().items()}
    return sae_from_saelens(cfg, state, source=spec)
