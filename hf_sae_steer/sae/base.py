"""One SAE interface for every checkpoint format.

Every reader in ``hf_sae_steer.sae`` returns an :class:`SAE`: a preprocessing step, linear
pre-activations, an elementwise (or top-k) activation and a linear decoder (METHOD.md §1).
Weights follow SAELens's layout: ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``; the decoder
rows double as an embedding table so k-sparse latents decode without a dense matmul.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Activation = Literal["relu", "topk", "jumprelu", "gated"]
Normalize = Literal["none", "layer_norm", "constant_norm_rescale"]
SITES = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
LN_EPS = 1e-5


@dataclass
class SAEConfig:
    """Shape, activation and preprocessing of an SAE, plus where it was trained (when known)."""

    d_in: int
    d_sae: int
    activation: Activation = "relu"
    k: int | None = None
    normalize_activations: Normalize = "none"
    apply_b_dec_to_input: bool = True
    center_input: bool = False
    layer: int | None = None
    site: str | None = None
    hook_name: str | None = None
    model_name: str | None = None
    spec: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.activation not in ("relu", "topk", "jumprelu", "gated"):
            raise ValueError(
                f"Unknown SAE activation {self.activation!r}; use relu, topk, jumprelu or gated."
            )
        if self.activation == "topk" and (self.k is None or not 0 < self.k <= self.d_sae):
            raise ValueError(f"A TopK SAE needs 0 < k <= d_sae={self.d_sae}, got k={self.k}.")
        if self.normalize_activations not in ("none", "layer_norm", "constant_norm_rescale"):
            raise ValueError(
                f"Unknown normalize_activations {self.normalize_activations!r}; use none, "
                "layer_norm or constant_norm_rescale."
            )
        if self.site is not None and self.site not in SITES:
            raise ValueError(f"Unknown site {self.site!r}; use one of {', '.join(SITES)}.")


class NormInfo(NamedTuple):
    """What preprocessing removed, to give back on decode: ``y * scale + shift``."""

    scale: Tensor | None
    shift: Tensor | None


class SAE(nn.Module):
    """A sparse autoencoder: ``decode(activate(encode_pre(preprocess(x))))``.

    Subclasses only define :meth:`activate` (and, for k-sparse codes, :meth:`activate_sparse`).
    """

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, n = cfg.d_in, cfg.d_sae
        self.W_enc = nn.Parameter(torch.zeros(d, n), requires_grad=False)
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

    def postprocess(self, y: Tensor, info: NormInfo | None) -> Tensor:
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
        flat = torch.addmm(self.b_enc, x.reshape(-1, x.shape[-1]), self.W_enc)
        return flat.view(*x.shape[:-1], self.d_sae)

    def activate(self, pre: Tensor) -> Tensor:
        raise NotImplementedError

    def activate_sparse(self, pre: Tensor) -> tuple[Tensor, Tensor]:
        """``(indices, values)`` of the ``k`` selected latents; only for k-sparse SAEs."""
        raise NotImplementedError(f"{type(self).__name__} has no k-sparse code.")

    def encode(self, x: Tensor) -> Tensor:
        x, _ = self.preprocess(x)
        return self.activate(self.encode_pre(x))

    def decode(self, z: Tensor, info: NormInfo | None = None) -> Tensor:
        return self.postprocess(z @ self.W_dec + self.b_dec, info)

    def decode_sparse(
        self, indices: Tensor, values: Tensor, info: NormInfo | None = None
    ) -> Tensor:
        """Decode a code given by ``indices``/``values`` ``[..., m]`` without a dense matmul."""
        return self.postprocess(self.decode_delta_sparse(indices, values) + self.b_dec, info)

    def decode_delta_sparse(self, indices: Tensor, values: Tensor) -> Tensor:
        """``values @ W_dec[indices]``: the decoder's linear part on a sparse code."""
        lead = indices.shape[:-1]
        m = indices.shape[-1]
        out = F.embedding_bag(
            indices.reshape(-1, m),
            self.W_dec,
            per_sample_weights=values.reshape(-1, m).to(self.W_dec.dtype),
            mode="sum",
        )
        return out.reshape(*lead, self.d_in)

    def forward(self, x: Tensor) -> Tensor:
        """The SAE round trip: ``decode(encode(x))`` in the input's space."""
        xp, info = self.preprocess(x)
        return self.decode(self.activate(self.encode_pre(xp)), info)

    # -- identity ------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """A short hash of the weights (not the dtype/device) to tie score artifacts to an SAE."""
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

    def config_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self.cfg), default=str))

    def save_pretrained(self, path: str | Path) -> Path:
        """Write a SAELens-layout folder (``cfg.json`` + ``sae_weights.safetensors``)."""
        from hf_sae_steer.sae.saelens import save_saelens

        return save_saelens(self, path)


def build_sae(cfg: SAEConfig, state: dict[str, Tensor]) -> SAE:
    """Instantiate the architecture named by ``cfg`` and load ``state`` (SAELens layout)."""
    from hf_sae_steer.sae.architectures import ARCHITECTURES

    sae = ARCHITECTURES[cfg.activation](cfg)
    expected = dict(sae.state_dict())
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ValueError(f"SAE checkpoint lacks {', '.join(missing)} for a {cfg.activation} SAE.")
    for name, ref in expected.items():
        got = state[name]
        if tuple(got.shape) != tuple(ref.shape):
            raise ValueError(
                f"SAE tensor {name} has shape {tuple(got.shape)}, expected {tuple(ref.shape)} "
                f"for d_in={cfg.d_in}, d_sae={cfg.d_sae}."
            )
    sae.load_state_dict({k: state[k].to(torch.float32) for k in expected})
    return sae
