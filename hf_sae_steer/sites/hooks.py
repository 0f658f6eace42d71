"""Hooks at a site: make a site's hidden state ``x`` become ``edit(x)``, or read it and stop.

Hooks do no maths: they locate the hidden state in whatever a block passes around (a tensor in
transformers 5, a tuple before; ``[batch*seq, d]`` in OPT's ``fc2``) and hand it to ``edit``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from hf_sae_steer.sites.layouts import ModelLayout
from hf_sae_steer.sites.names import Site

Edit = Callable[[Tensor], Tensor]
_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks")
_KEY_SETS = ("_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs",
             "_forward_hooks_always_called")  # fmt: skip


class SteeringHook:
    """A hook that hf_sae_steer registered: it marks itself ours, and a deep copy of it is inert.

    Steering belongs to a SteeredModel, not to the weights: ``copy.deepcopy`` of a steered model
    gives an *unsteered* copy whose hook slots pass everything through (and that
    :func:`remove_hooks` clears), never hooks that still read the original's state.
    """

    live = True

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)

    def __deepcopy__(self, memo: dict) -> InertHook:
        return InertHook()


class InertHook(SteeringHook):
    """What a copied steering hook becomes: returns ``None``, which changes nothing."""

    live = False

    def __init__(self) -> None:
        self.fn = lambda *args: None


def register(
    module: nn.Module, kind: str, fn: Callable[..., Any], **options: Any
) -> RemovableHandle:
    """``module.register_forward_hook`` (``kind="forward"``) or ``register_forward_pre_hook``
    (``kind="pre"``) with ``fn`` marked as ours."""
    hook = SteeringHook(fn)
    if kind == "pre":
        return module.register_forward_pre_hook(hook, **options)
    return module.register_forward_hook(hook, **options)


def steering_hooks(model: nn.Module) -> list[tuple[nn.Module, str, int, SteeringHook]]:
    """Every hook of ours on ``model``'s modules: ``(module, dict name, key, hook)``."""
    found = []
    for module in model.modules():
        for name in _HOOK_DICTS:
            for key, hook in getattr(module, name).items():
                if isinstance(hook, SteeringHook):
                    found.append((module, name, key, hook))
    return found


def remove_hooks(model: nn.Module, *, live: bool = False) -> int:
    """Remove inert hooks of ours from ``model`` (and live ones with ``live=True``); returns how
    many."""
    removed = 0
    for module, name, key, hook in steering_hooks(model):
        if hook.live and not live:
            continue
        getattr(module, name).pop(key, None)
        for extra in _KEY_SETS:
            getattr(module, extra, {}).pop(key, None)
        removed += 1
    return removed


def _first(value: Any) -> Tensor:
    return value[0] if isinstance(value, tuple | list) else value


def _replace_first(value: Any, new: Tensor) -> Any:
    if isinstance(value, tuple):
        return (new, *value[1:])
    if isinstance(value, list):
        return [new, *value[1:]]
    return new


def _input_hidden(args: tuple, kwargs: dict) -> Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_input_hidden(args: tuple, kwargs: dict, new: Tensor) -> tuple[tuple, dict]:
    if args:
        return (new, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": new}


def hook_site(layout: ModelLayout, site: Site, edit: Edit) -> list[RemovableHandle]:
    """Register hooks so that ``site``'s hidden state ``x`` becomes ``edit(x)``.

    Returns the handles; removing them all restores the model. Whatever container the block
    returns (a tensor in transformers 5, a tuple before) is returned in kind. A ``resid_mid``
    hook reads the block input as earlier pre-hooks left it: hook ``resid_pre`` first.
    """
    layout.check_layer(site.layer)
    block = layout.blocks[site.layer]
    kind = site.kind

    if kind == "resid_pre":

        def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            return _with_input_hidden(args, kwargs, edit(_input_hidden(args, kwargs)))

        return [register(block, "pre", pre_hook, with_kwargs=True)]

    if kind == "resid_post":

        def post_hook(module: nn.Module, args: tuple, output: Any) -> Any:
            return _replace_first(output, edit(_first(output)))

        # First in line, so transformers' output_hidden_states recorders see the steered state.
        return [register(block, "forward", post_hook, prepend=True)]

    if kind in ("attn_out", "mlp_out"):
        target = layout.sublayer(site.layer, _sublayer(layout, kind))
        # Some sublayers run on [batch*seq, d] (OPT's fc2); edits always see [batch, seq, d].
        lead: list[torch.Size] = []

        def note_shape(module: nn.Module, args: tuple, kwargs: dict) -> None:
            lead[:] = [_input_hidden(args, kwargs).shape[:-1]]

        def out_hook(module: nn.Module, args: tuple, output: Any) -> Any:
            x = _first(output)
            shape = lead[0] if lead else x.shape[:-1]
            if x.shape[:-1] != shape and x.shape[:-1].numel() == shape.numel():
                return _replace_first(output, edit(x.reshape(*shape, x.shape[-1])).reshape(x.shape))
            return _replace_first(output, edit(x))

        return [
            register(block, "pre", note_shape, with_kwargs=True),
            register(target, "forward", out_hook),
        ]

    # resid_mid = block input + attention output. Editing it means editing what attention
    # adds: attn' = edit(resid_pre + attn) - resid_pre, which both the MLP and the stream see.
    if layout.parallel or layout.post_ln:
        why = (
            "attention and MLP read the same input in parallel"
            if layout.parallel
            else "post-LN blocks normalise the stream between attention and MLP"
        )
        raise ValueError(
            f"resid_mid does not exist in {type(block).__name__}: {why}. "
            "Use resid_pre, resid_post, attn_out or mlp_out."
        )
    attn = layout.sublayer(site.layer, layout.attn)
    stash: list[Tensor] = []

    def stash_input(module: nn.Module, args: tuple, kwargs: dict) -> None:
        stash[:] = [_input_hidden(args, kwargs)]

    def mid_hook(module: nn.Module, args: tuple, output: Any) -> Any:
        added = _first(output)
        mid = stash.pop() + added
        return _replace_first(output, added + (edit(mid) - mid))

    return [
        register(block, "pre", stash_input, with_kwargs=True),
        register(attn, "forward", mid_hook),
    ]


def _sublayer(layout: ModelLayout, kind: str) -> str:
    return layout.attn if kind == "attn_out" else layout.mlp


class StopForward(Exception):
    """Raised by a capture hook to end a forward pass once the site has been read."""


@torch.no_grad()
def run_to_site(model: nn.Module, layout: ModelLayout, site: Site, **inputs: Any) -> Tensor:
    """Run ``model(**inputs)`` only as far as ``site`` and return its hidden state.

    Later blocks and the LM head never run, which is what makes scoring cheap.
    """
    captured: list[Tensor] = []

    def capture(x: Tensor) -> Tensor:
        captured.append(x)
        raise StopForward

    handles = hook_site(layout, site, capture)
    try:
        model(**inputs, use_cache=False)
    except StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    if not captured:
        raise RuntimeError(f"The forward pass never reached {site.hook_name}.")
    return captured[0]
