"""docs/method.md §1-2 written out plainly, one token at a time, from an OpenAI state dict.

Shares no code with hf_sae_steer: it is the yardstick the library is measured against.
"""

from __future__ import annotations

import math

import torch


class ReferenceOpenAISAE:
    def __init__(self, state: dict) -> None:
        self.pre_bias = state["pre_bias"].double()
        self.W_enc = state["encoder.weight"].double()  # [n, d]
        self.latent_bias = state["latent_bias"].double()
        self.W_dec = state["decoder.weight"].double()  # [d, n]
        self.topk = state.get("activation", "ReLU") == "TopK"
        self.k = state["activation_state_dict"]["k"] if self.topk else None

    def preprocess(self, x):
        if not self.topk:
            return x, None
        mu = x.mean()
        x = x - mu
        std = x.std()  # unbiased, as torch's default
        return x / (std + 1e-5), (mu, std)

    def pre(self, x):
        return self.W_enc @ (x - self.pre_bias) + self.latent_bias

    def act(self, pre):
        if not self.topk:
            return torch.relu(pre)
        out = torch.zeros_like(pre)
        values, indices = torch.topk(pre, self.k)
        for v, i in zip(values.tolist(), indices.tolist(), strict=True):
            out[i] = max(v, 0.0)
        return out

    def decode(self, z, info):
        y = self.W_dec @ z + self.pre_bias
        if info is not None:
            mu, std = info
            y = y * std + mu
        return y


def steer_token(
    sae, x, method, scores, preserve_error=False, strength=1.0, *, clamp=None, added=None,
    vector=None, topic=None, log_odds=None, bias=None,
):  # fmt: skip
    """x: one position's hidden state [d]; returns the steered state (float64).

    ``clamp``: per-latent values for clamp's top 5 (default: the reference's 10 each);
    ``added``: {latent: weight} for ``add``; ``vector``: the vector of ``vector``.
    """
    x = x.double()
    if method == "vector":
        return x + strength * torch.as_tensor(vector).double()
    if method == "ablate":  # project the unit direction out, times the strength
        d = torch.as_tensor(vector).double()
        d = d / d.norm()
        return x - strength * float(x.detach() @ d) * d
    s = None if scores is None else torch.as_tensor(scores).double()
    xp, info = sae.preprocess(x)
    pre = sae.pre(xp)
    z = sae.act(pre)
    if method == "attenuate":  # the vector subtracted, times p(topic) from the latents that fire
        total = bias + sum(w for i, w in zip(topic, log_odds, strict=True) if z[i] > 0)
        p = 1.0 / (1.0 + math.exp(-total))
        return x - strength * p * torch.as_tensor(vector).double()
    if method == "orig":
        return x
    if method == "sae":
        z_new = z
    elif method == "clamp":
        z_new = z.clone()
        for i in torch.topk(s, 5).indices.tolist():
            z_new[i] = z_new[i] + (10.0 if clamp is None else float(clamp[i]))
    elif method == "add":
        z_new = z.clone()
        for i, w in added.items():
            z_new[i] = z_new[i] + w
    elif method == "weight":
        z_new = sae.act(pre * s)
    elif method == "swap":
        chosen = sae.act(pre * s) != 0
        z_new = torch.where(chosen, pre, torch.zeros_like(pre))
    elif method == "suppress":  # the topic latents scaled by (1 - gate), where they fire
        gate = 1.0
        if log_odds is not None:
            total = bias
            for i, w in zip(topic, log_odds, strict=True):
                if z[i] > 0:
                    total += w
            gate = 1.0 / (1.0 + math.exp(-total))
        z_new = z.clone()
        for i in topic:
            z_new[i] = z[i] * (1.0 - gate)
        x_new = x + sae.decode(z_new, info) - sae.decode(z, info)  # the error always kept
        return x + strength * (x_new - x)
    else:
        raise ValueError(method)
    if preserve_error:
        x_new = x + sae.decode(z_new, info) - sae.decode(z, info)
    else:
        x_new = sae.decode(z_new, info)
    return x + strength * (x_new - x)


def steer_sequence(sae, hidden, method, scores, **options):
    """hidden [batch, seq, d] -> steered, token by token."""
    out = torch.empty_like(hidden, dtype=torch.float64)
    for b in range(hidden.shape[0]):
        for t in range(hidden.shape[1]):
            out[b, t] = steer_token(sae, hidden[b, t], method, scores, **options)
    return out.to(hidden.dtype)
