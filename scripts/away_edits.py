"""The suppressions ``scripts/explore_away.py`` compares, as plain functions of a site's hidden
state, and the token statistics of a topic's fit they are built from (issue 21 research)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

Edit = Callable[[Tensor], Tensor]


# -- statistics of the fit ------------------------------------------------------------------
@dataclass
class Stats:
    """Token-level statistics of one topic's fit texts against the reference set."""

    n_fit: int
    n_ref: int
    fire_fit: Tensor  # [n] tokens where each latent fires
    fire_ref: Tensor
    act_fit: Tensor  # [n] summed activation
    act_ref: Tensor
    attr_fit: Tensor  # [n] summed activation x gradient of the following text's log-likelihood
    attr_ref: Tensor
    v: Tensor  # [d] mean raw x (fit) - mean raw x (ref)
    mean_norm: float  # mean |x| over reference tokens
    typical: Tensor  # [n] mean activation where active, reference tokens
    artifact: Tensor | None  # the shipped medical artifact's latents (mean_diff k=10), if any
    texts_fit: Tensor  # [n] fit texts on which each latent fires
    texts_ref: Tensor  # [n] reference texts on which each latent fires

    def freq(self) -> tuple[Tensor, Tensor]:
        fa = (self.fire_fit + 0.5) / (self.n_fit + 1)
        fr = (self.fire_ref + 0.5) / (self.n_ref + 1)
        return fa, fr

    def rank(self, how: str) -> Tensor:
        fa, fr = self.freq()
        if how == "ratio":
            key = fa / fr
            key[self.fire_fit < 3] = -1  # a latent seen on two fit tokens says little
        elif how == "odds":
            key = (fa / (1 - fa)).log() - (fr / (1 - fr)).log()
            key[self.fire_fit < 3] = -1e9
        elif how == "spread":  # the frequency ratio among latents firing on many fit texts
            key = fa / fr
            key[self.texts_fit < max(3, 0.125 * float(self.texts_fit.max()))] = -1
        elif how == "artifact":  # the shipped artifact's mean_diff latents, heaviest first
            if self.artifact is None:
                raise ValueError("only the medical topic has a shipped artifact")
            return self.artifact
        elif how == "actdiff":
            key = self.act_fit / self.n_fit - self.act_ref / self.n_ref
        elif how == "attr":
            key = self.attr_fit / self.n_fit - self.attr_ref / self.n_ref
        else:
            raise ValueError(how)
        return key.argsort(descending=True)


def site_states(model, tok, texts, layer, *, grad: bool = False):
    """Per text: the raw states at block ``layer``'s output (first position dropped) and, with
    ``grad``, the gradient of the text's total log-likelihood with respect to them."""
    out = []
    block = model.transformer.h[layer]
    for text in texts:
        ids = tok(text, return_tensors="pt")["input_ids"][:, :128]
        held: dict[str, Tensor] = {}

        def keep(_m, _i, o, held=held):
            h = o[0] if isinstance(o, tuple) else o
            if grad:
                h.retain_grad()
            held["h"] = h

        handle = block.register_forward_hook(keep)
        try:
            with torch.set_grad_enabled(grad):
                logits = model(ids).logits
                if grad:
                    logp = torch.log_softmax(logits[0, :-1].float(), -1)
                    logp.gather(-1, ids[0, 1:, None]).sum().backward()
        finally:
            handle.remove()
        h = held["h"][0, 1:].detach()
        g = held["h"].grad[0, 1:].detach() if grad else None
        out.append((h, g))
    return out


def fit_stats(model, tok, sae, fit, reference, layer) -> Stats:
    parts, per_text = {}, {}
    for name, texts in (("fit", fit), ("ref", reference)):
        rows = site_states(model, tok, texts, layer, grad=True)
        with torch.no_grad():
            per_text[name] = sum((sae.encode(h) > 0).any(0).float() for h, _ in rows)
        x = torch.cat([h for h, _ in rows])
        g = torch.cat([gg for _, gg in rows])
        with torch.no_grad():
            z = sae.encode(x)
            scale = sae.input_scale(x)
            # d logp / d z_i = scale * W_dec[i] . g ; attribution = z_i * that
            attr = z * ((g * scale) @ sae.W_dec.T)
        parts[name] = (x, z, attr)
    (xf, zf, af), (xr, zr, ar) = parts["fit"], parts["ref"]
    active = (zr > 0).sum(0)
    typical = torch.where(active > 0, zr.sum(0) / active.clamp(min=1), torch.zeros(()))
    return Stats(
        len(xf), len(xr), (zf > 0).sum(0).float(), (zr > 0).sum(0).float(), zf.sum(0),
        zr.sum(0), af.sum(0), ar.sum(0), xf.mean(0) - xr.mean(0),
        float(xr.norm(dim=-1).mean()), typical, None, per_text["fit"], per_text["ref"],
    )  # fmt: skip


# -- the suppressions: pure functions of x --------------------------------------------------
def latent_change(sae, x: Tensor, new_code: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """``x + scale(x) (z' - z) W_dec`` with ``z' = new_code(z, x)``: the SAE's error kept."""
    xp, info = sae.preprocess(x)
    z = sae.activate(sae.encode_pre(xp))
    dz = new_code(z, x) - z
    return x + sae.scale_change(dz @ sae.W_dec, info)


def posterior(stats: Stats, latents: Tensor, prior_logit: float = 0.0):
    """``p(topic | token)``: naive Bayes over whether each of ``latents`` fires."""
    fa, fr = stats.freq()
    fa, fr = fa[latents], fr[latents]
    on = (fa / fr).log()
    off = ((1 - fa) / (1 - fr)).log()
    base = float(off.sum()) + prior_logit

    def p_of(z: Tensor) -> Tensor:
        fires = (z[..., latents] > 0).float()
        return torch.sigmoid(base + fires @ (on - off))

    return p_of


def make_edit(sae, stats: Stats, family: str, strength: float, latents: Tensor | None,
              prior_logit: float = 0.0) -> Edit:  # fmt: skip
    v = stats.v
    d = v / v.norm()
    if family == "caa":
        return lambda x: x - strength * v
    if family == "ablate":
        return lambda x: x - strength * (x @ d)[..., None] * d
    assert latents is not None
    mask = torch.zeros(sae.d_sae)
    mask[latents] = 1.0
    if family in ("clamp", "random"):  # z_i -> (1 - a) z_i on the chosen latents
        return lambda x: latent_change(sae, x, lambda z, _x: z - strength * z * mask)
    if family == "clampneg":  # z_i -> -c * typical_i where it fires
        target = -strength * stats.typical

        def neg(z, _x):
            return torch.where((z > 0) & (mask > 0), target, z)

        return lambda x: latent_change(sae, x, neg)
    p_of = posterior(stats, latents, prior_logit)
    if family == "atten":
        return lambda x: latent_change(
            sae, x, lambda z, _x: z - (strength * p_of(z))[..., None] * z * mask
        )

    def code_p(x: Tensor) -> Tensor:
        xp, _ = sae.preprocess(x)
        return p_of(sae.activate(sae.encode_pre(xp)))

    if family == "gated_ablate":
        return lambda x: x - (strength * code_p(x) * (x @ d))[..., None] * d
    if family == "gated_caa":
        return lambda x: x - (strength * code_p(x))[..., None] * v
    raise ValueError(family)
