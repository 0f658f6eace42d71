"""One SAE interface for every checkpoint format, and the registry of SAE architectures.

An SAE is a preprocessing step, linear pre-activations, an activation function and a linear
decoder (``docs/method.md`` §1). Weights follow SAELens's layout: ``W_enc [d_in, d_sae]``,
``W_dec [d_sae, d_in]``. Architectures differ only in the activation; each lives in its own
module and registers itself with :func:`register_architecture`, so this module never imports
them.

``W_enc`` is stored latent by latent (the memory of a ``[d_sae, d_in]`` matrix, seen as its
transpose, as ``nn.Linear`` stores weights): each latent's encoder column is contiguous, so the
pre-activations are computed in blocks of :data:`ENCODE_BLOCK` latents whose outputs stay in
cache. For the few rows of a decode step (8 tokens, GPT-2 small, 32,768 latents) that is about
1.8x faster than one matmul over the whole width, bit for bit the same result (each value is the
same dot product), and no slower for thousands of rows.

The latent-space API used by steering and scoring:

- :meth:`SAE.preprocess` / :meth:`SAE.encode_pre`: the input as the SAE saw it in training and
  the pre-activations, plus :class:`NormInfo` (what preprocessing removed);
- :meth:`SAE.code`: the activation as a :data:`Code`, a :class:`SparseCode` for k-sparse SAEs
  (TopK), a dense ``[..., d_sae]`` tensor otherwise;
- :meth:`SAE.decode_code`: a code back to the input's space;
- :meth:`SAE.decode_change`: a change of latents to the change of the input it causes, with the
  preprocessing's scale applied (the decoder bias and the shift cancel out of a difference);
- :meth:`SAE.placed`: the SAE on a device and dtype (a copy only when it has to move).
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hf_sae_steer.sae.config import SAEConfig

LN_EPS = 1e-5
ENCODE_BLOCK = 1024  # latents per block of the encoder's matmul (see the module docstring)


class NormInfo(NamedTuple):
    """What preprocessing removed, to give back on decode: ``y * scale + shift``."""

    scale: Tensor | None
    shift: Tensor | None


class SparseCode(NamedTuple):
    """A k-sparse code: latent ``indices [..., m]`` and their ``values [..., m]``.

    Indices may repeat; values then add up (a change is old latents with negated values plus
    new ones).
    """

    indices: Tensor
    values: Tensor

    def minus(self, other: SparseCode) -> SparseCode:
        """``self - other`` as one sparse code (concatenated, nothing merged)."""
        return SparseCode(
            torch.cat([self.indices, other.indices], dim=-1),
            torch.cat([self.values, -other.values], dim=-1),
        )


Code = Tensor | SparseCode


class SAE(nn.Module):
    """A sparse autoencoder: ``decode(activate(encode_pre(preprocess(x))))``.

    Subclasses define :meth:`activate` (and, for k-sparse codes, :meth:`activate_sparse`) and
    register with :func:`register_architecture`.
    """

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, n = cfg.d_in, cfg.d_sae
        # latent-major storage, seen as [d_in, d_sae] (module docstring); loading copies into it
        self.W_enc = nn.Parameter(torch.zeros(n, d).t(), requires_grad=False)
        self.b_enc = nn.Parameter(torch.zeros(n), requires_grad=False)
        self.W_dec = nn.Parameter(torch.zeros(n, d), requires_grad=False)
        self.b_dec = nn.Parameter(torch.zeros(d), requires_grad=False)

    # -- shape and placement -------------------------------------------------------------
    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    @property
    def k(self) -> int | None:
        """Latents per token when the code is k-sparse by construction (TopK), else ``None``."""
        return self.cfg.k if self.cfg.activation == "topk" else None

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc.dtype

    def placed(self, device: torch.device | str, dtype: torch.dtype | None = None) -> SAE:
        """This SAE on ``device`` in ``dtype``: itself when already there, else a moved copy
        (the caller's SAE never changes device or dtype under it)."""
        device, dtype = torch.device(device), dtype or self.dtype
        if self.device == device and self.dtype == dtype:
            return self
        return copy.deepcopy(self).to(device=device, dtype=dtype)

    # -- the four steps ------------------------------------------------------------------
    def preprocess(self, x: Tensor) -> tuple[Tensor, NormInfo]:
        """Centre / normalise ``x`` as the SAE saw it in training; return what to undo."""
        scale = shift = None
        if self.cfg.center_input:
            # TransformerLens's center_writing_weights keeps the residual stream mean-free.
            shift = x.mean(dim=-1, keepdim=True)
            x = x - shift
        norm = self.cfg.normalize_activations
        if norm == "layer_norm":
            mu = x.mean(dim=-1, keepdim=True)
            x = x - mu
            scale = x.std(dim=-1, keepdim=True)
            x = x / (scale + LN_EPS)
            shift = mu if shift is None else shift + mu
        elif norm == "constant_norm_rescale":
            factor = (self.d_in**0.5) / x.norm(dim=-1, keepdim=True)
            x = x * factor
            scale = 1.0 / factor
        return x, NormInfo(scale, shift)

    def input_scale(self, x: Tensor) -> Tensor | None:
        """The per-token scale :meth:`preprocess` divides ``x`` by (``None`` when it does not
        scale), without normalising ``x``: what a change in the decoder's space is multiplied
        by to be in the input's units."""
        norm = self.cfg.normalize_activations
        if norm == "layer_norm":  # centring changes no standard deviation
            return x.std(dim=-1, keepdim=True)
        if norm == "constant_norm_rescale":
            if self.cfg.center_input:
                x = x - x.mean(dim=-1, keepdim=True)
            return x.norm(dim=-1, keepdim=True) / (self.d_in**0.5)
        return None

    def postprocess(self, y: Tensor, info: NormInfo | None) -> Tensor:
        """Undo :meth:`preprocess` on a decoded ``y``."""
        if info is None:
            return y
        if info.scale is not None:
            y = y * info.scale
        if info.shift is not None:
            y = y + info.shift
        return y

    def encode_pre(self, x: Tensor) -> Tensor:
        """Pre-activations of a preprocessed input."""
        if self.cfg.apply_b_dec_to_input:
            x = x - self.b_dec
        # addmm folds the bias into the matmul: no second pass over a [tokens, d_sae] temporary.
        rows, w, b = x.reshape(-1, x.shape[-1]), self.W_enc, self.b_enc
        n = self.d_sae
        if w.stride(0) != 1 or n <= 2 * ENCODE_BLOCK:  # stored another way, or too narrow
            return torch.addmm(b, rows, w).view(*x.shape[:-1], n)
        out = torch.empty(rows.shape[0], n, dtype=torch.result_type(rows, w), device=rows.device)
        for i in range(0, n, ENCODE_BLOCK):
            j = min(i + ENCODE_BLOCK, n)
            torch.addmm(b[i:j], rows, w[:, i:j], out=out[:, i:j])
        return out.view(*x.shape[:-1], n)

    def activate(self, pre: Tensor) -> Tensor:
        """The dense code ``[..., d_sae]`` of pre-activations."""
        raise NotImplementedError

    def activate_sparse(self, pre: Tensor) -> SparseCode:
        """The ``k`` selected latents; only for k-sparse SAEs."""
        raise NotImplementedError(f"{type(self).__name__} has no k-sparse code.")

    def code(self, pre: Tensor) -> Code:
        """The activation in this SAE's natural form: sparse when k-sparse, else dense."""
        return self.activate_sparse(pre) if self.k is not None else self.activate(pre)

    def encode(self, x: Tensor) -> Tensor:
        """The dense code of ``x`` (preprocessing included)."""
        x, _ = self.preprocess(x)
        return self.activate(self.encode_pre(x))

    def encode_code(self, x: Tensor) -> tuple[Code, NormInfo]:
        """The code of ``x`` in natural form, and what preprocessing removed."""
        xp, info = self.preprocess(x)
        return self.code(self.encode_pre(xp)), info

    def decode(self, z: Tensor, info: NormInfo | None = None) -> Tensor:
        """A dense code back to the input's space."""
        return self.postprocess(z @ self.W_dec + self.b_dec, info)

    def decode_code(self, code: Code, info: NormInfo | None = None) -> Tensor:
        """A dense or sparse code back to the input's space."""
        if isinstance(code, SparseCode):
            return self.postprocess(self._linear_sparse(code) + self.b_dec, info)
        return self.decode(code, info)

    def decode_change(self, change: Code, info: NormInfo | None = None) -> Tensor:
        """The change of the input caused by changing the latents by ``change``.

        Decoding is affine, so only the decoder's linear part and the preprocessing's scale act
        on a difference; ``b_dec`` and the shift cancel.
        """
        if isinstance(change, SparseCode):
            delta = self._linear_sparse(change)
        else:
            delta = change @ self.W_dec
        return self.scale_change(delta, info)

    def scale_change(self, delta: Tensor, info: NormInfo | None) -> Tensor:
        """A change in the decoder's space, in the input's units."""
        if info is None or info.scale is None:
            return delta
        return delta * info.scale

    def _linear_sparse(self, code: SparseCode) -> Tensor:
        """``values @ W_dec[indices]`` without a dense ``d_sae`` matmul (embedding_bag)."""
        lead, m = code.indices.shape[:-1], code.indices.shape[-1]
        out = F.embedding_bag(
            code.indices.reshape(-1, m),
            self.W_dec,
            per_sample_weights=code.values.reshape(-1, m).to(self.W_dec.dtype),
            mode="sum",
        )
        return out.reshape(*lead, self.d_in)

    def forward(self, x: Tensor) -> Tensor:
        """The SAE round trip: ``decode(encode(x))`` in the input's space."""
        code, info = self.encode_code(x)
        return self.decode_code(code, info)

    # -- identity ------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """A short hash of the weights as loaded, to tie score artifacts to an SAE.

        It does not depend on the device or the dtype: a conversion (``.to(torch.bfloat16)``,
        ``load_sae(..., dtype=...)``) keeps the fingerprint of the weights before it.
        """
        return self.__dict__.get("_fingerprint") or self._hash_weights()

    def _apply(self, fn: Any, recurse: bool = True) -> SAE:
        # Every .to()/.half()/.cuda() comes through here: remember the identity first when the
        # conversion changes the precision (rounding would change the hash, not the SAE). A
        # probe tensor tells whether it will, without hashing on every move.
        probe = fn(torch.zeros(0, dtype=self.dtype, device=self.device))
        if probe.dtype != self.dtype and "_fingerprint" not in self.__dict__:
            self.__dict__["_fingerprint"] = self._hash_weights()
        return super()._apply(fn, recurse)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        self.__dict__.pop("_fingerprint", None)  # new weights, new identity
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _hash_weights(self) -> str:
        h = hashlib.sha256()
        for name, tensor in sorted(self.state_dict().items()):
            t = tensor.detach().to("cpu", torch.float32).contiguous()
            h.update(name.encode())
            h.update(str(tuple(t.shape)).encode())
            h.update(t.numpy().tobytes())
        return h.hexdigest()[:16]

    def extra_repr(self) -> str:
        c = self.cfg
        where = f", layer={c.layer}, site={c.site}" if c.layer is not None else ""
        k = f", k={c.k}" if c.activation == "topk" else ""
        return f"d_in={c.d_in}, d_sae={c.d_sae}, activation={c.activation}{k}{where}"

    def save_pretrained(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write a SAELens-layout folder (``cfg.json`` + ``sae_weights.safetensors``), the
        library's native SAE format, atomically; :func:`~hf_sae_steer.sae.load_sae` reads it
        back. A non-empty folder is refused unless ``overwrite=True``."""
        from hf_sae_steer.sae.saelens_format import write_folder

        return write_folder(self.cfg, self.state_dict(), path, overwrite=overwrite)


# -- the architecture registry -----------------------------------------------------------------
ARCHITECTURES: dict[str, type[SAE]] = {}
_SAEType = TypeVar("_SAEType", bound=type[SAE])


def register_architecture(activation: str) -> Callable[[_SAEType], _SAEType]:
    """Class decorator: the SAE class for ``SAEConfig.activation == activation``."""

    def register(cls: _SAEType) -> _SAEType:
        ARCHITECTURES[activation] = cls
        return cls

    return register


def _architecture(cfg: SAEConfig) -> type[SAE]:
    cls = ARCHITECTURES.get(cfg.activation)
    if cls is None:
        raise ValueError(
            f"Unknown SAE activation {cfg.activation!r}; use one of {', '.join(ARCHITECTURES)}."
        )
    return cls


def expected_shapes(cfg: SAEConfig) -> dict[str, tuple[int, ...]]:
    """The tensors an SAE of ``cfg`` holds and their shapes, without allocating them."""
    with torch.device("meta"):  # a config may claim any size: nothing real is allocated
        shell = _architecture(cfg)(cfg)
    return {name: tuple(t.shape) for name, t in shell.state_dict().items()}


def check_weights(state: dict[str, Any], names: Any = None) -> None:
    """Refuse SAE tensors (``names`` of ``state``, default all) that are not floating point or
    not finite: one ValueError naming the tensor (callers add the file)."""
    for name in state if names is None else names:
        tensor = state.get(name)
        if tensor is None:
            continue
        if not isinstance(tensor, Tensor):
            raise ValueError(f"SAE tensor {name} is a {type(tensor).__name__}, not a tensor.")
        if not tensor.is_floating_point():
            kind = str(tensor.dtype).removeprefix("torch.")
            raise ValueError(f"SAE tensor {name} is {kind}, not floating point.")
        if not bool(torch.isfinite(tensor).all()):
            raise ValueError(
                f"SAE tensor {name} is not finite (NaN or inf): the file is corrupt, or the SAE "
                "diverged in training."
            )


def check_state(cfg: SAEConfig, state: dict[str, Any]) -> None:
    """``state`` holds every tensor an SAE of ``cfg`` needs, in its shape, floating point and
    finite; checked before anything of the config's size is allocated."""
    expected = expected_shapes(cfg)
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ValueError(f"SAE checkpoint lacks {', '.join(missing)} for a {cfg.activation} SAE.")
    for name, shape in expected.items():
        got = tuple(getattr(state[name], "shape", ()))
        if got != shape:
            raise ValueError(
                f"SAE tensor {name} has shape {got}, expected {shape} for d_in={cfg.d_in}, "
                f"d_sae={cfg.d_sae}."
            )
    check_weights(state, expected)


def build_sae(cfg: SAEConfig, state: dict[str, Tensor]) -> SAE:
    """Instantiate the architecture named by ``cfg`` and load ``state`` (SAELens layout), after
    checking it (:func:`check_state`)."""
    check_state(cfg, state)
    sae = _architecture(cfg)(cfg)
    sae.load_state_dict({k: state[k].to(torch.float32) for k in expected_shapes(cfg)})
    return sae
