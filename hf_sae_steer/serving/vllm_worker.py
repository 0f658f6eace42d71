"""The steering side of the vLLM engine: hooks inside vLLM's workers that steer each token with
its own request's steering.

vLLM runs the model in worker processes (one per tensor-parallel rank). The engine
(:mod:`.vllm_engine`) names :class:`SteeringWorkerExtension` as vLLM's ``worker_extension_cls``,
so every worker gains the methods below, and calls ``hf_sae_steer_install`` on all of them
through ``collective_rpc``. Each worker then loads the same SAEs and concept library as the
front end (from the same paths: only JSON crosses processes, nothing is unpickled) and hooks
its copy of the model:

- a pre-hook on the whole model reads, once per forward pass, which requests the flattened
  tokens belong to (the V1 model runner's ``input_batch.req_ids`` and ``query_start_loc``),
  their positions, their prompt lengths and their steering (``SamplingParams.extra_args``,
  validated by the front end and resolved here through the same
  :class:`~hf_sae_steer.serving.concepts.ConceptLibrary`), and groups tokens whose requests
  steer a site identically;
- a forward hook on each steered block applies each group's edits (the
  :class:`~hf_sae_steer.steering.interventions.Intervention` of the one method table) to its
  tokens only, on the positions each item selects (``all``, ``prompt``, ``generated``: the
  token's position against its own request's prompt length).

Sites: ``resid_post`` of block L is the block's output; ``resid_pre`` of block L (L >= 1) is the
same tensor as block L-1's output, edited after that block's ``resid_post`` edits. Llama-style
blocks in vLLM return ``(hidden, residual)`` and add them in the next block's fused add-norm, so
the residual stream is their sum: a steered token gets ``hidden = x'`` and ``residual = 0``
(the next add gives exactly ``x'``); other tokens are left bit for bit as they were.

Tensor parallelism: the edits read the residual stream after the all-reduce that ends each
attention and MLP (vLLM's row-parallel output layers reduce their results), so every rank holds
the full ``[tokens, d]`` state, loads the same SAE, and applies the same edit; the ranks stay
identical without any communication. With pipeline parallelism each rank hooks only the blocks
it owns. Eager mode only: under vLLM's torch.compile the module hooks are not called at all.

A hook must never raise (vLLM would stop serving every request): an exception is logged,
leaves the batch unsteered and marks its steered requests as failed; a steered state that turns
NaN/inf is reverted to the unsteered state for that token and its request is marked failed.
The engine reads the failures (``hf_sae_steer_failures``) and ends those requests with an error.

This module imports no vLLM: it reads the runner's attributes by name (vLLM 0.32's V1 runner).
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from hf_sae_steer.serving.batch_decoder import NONFINITE
from hf_sae_steer.serving.concepts import ConceptLibrary, load_library
from hf_sae_steer.serving.steering_items import parse_steering
from hf_sae_steer.sites.names import Site
from hf_sae_steer.steering.batched import SiteEdit

logger = logging.getLogger(__name__)

# The key of SamplingParams.extra_args that carries a request's steering.
EXTRA_ARGS_KEY = "hf_sae_steer"
# Sites the vLLM engine can steer (the block outputs); the others need sublayer hooks.
VLLM_SITES = ("resid_post", "resid_pre")


def model_skeleton(model_path: str) -> nn.Module:
    """The Hugging Face model of ``model_path`` with no weights (on the meta device): what the
    concept library resolves sites, widths and strengths against. Costs no memory."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_path)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def build_library(setup: Mapping[str, Any]) -> ConceptLibrary:
    """The concept library of an engine setup: ``{"model": path, "saes": [spec, ...],
    "concepts": {name: source}}``; the front end and every worker build it the same way."""
    from hf_sae_steer.sae.loading import load_sae

    saes = [load_sae(spec) for spec in setup.get("saes", ())]
    return load_library(model_skeleton(setup["model"]), saes, dict(setup.get("concepts", {})))


def check_sites(sites: Sequence[Site]) -> None:
    """Refuse, at start-up, a site the vLLM engine cannot steer."""
    for site in sites:
        if site.kind not in VLLM_SITES or (site.kind == "resid_pre" and site.layer == 0):
            raise ValueError(
                f"The vLLM engine steers resid_post (any layer) and resid_pre (layer >= 1), not "
                f"{site.hook_name}; serve this concept with --engine transformers."
            )


def steering_args(request_id: str, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """What the engine puts in ``SamplingParams.extra_args`` for a steered request."""
    return {EXTRA_ARGS_KEY: {"id": request_id, "steering": [dict(i) for i in items]}}


@dataclass
class _Group:
    """Tokens of one forward pass whose requests steer one site with the same edits."""

    edits: tuple[SiteEdit, ...]
    index: Tensor  # [m] rows of the flattened batch
    generated: Tensor  # [m] bool: the token's position >= its request's prompt length
    whole: bool  # every row of the batch, in order
    owners: tuple[str, ...]  # the steering ids of the requests whose tokens these are


class WorkerSteering:
    """The hooks of one worker (see the module docstring)."""

    def __init__(self, runner: Any, library: ConceptLibrary) -> None:
        self.runner = runner
        self.library = library
        sites = library.sites
        check_sites(sites)
        self.model = runner.get_model()
        blocks = _find_blocks(self.model, library.layout.blocks_path, library.layout.n_layers)
        # Block b's output is resid_post(b), then resid_pre(b + 1).
        at_block: dict[int, list[Site]] = {}
        for site in sorted(sites, key=lambda s: (s.layer, s.kind != "resid_pre")):
            block = site.layer if site.kind == "resid_post" else site.layer - 1
            at_block.setdefault(block, []).append(site)
        for block in at_block:
            at_block[block].sort(key=lambda s: s.kind != "resid_post")
        self._handles: list[RemovableHandle] = [
            self.model.register_forward_pre_hook(self._observe, with_kwargs=True),
            self.model.register_forward_hook(self._finish),
        ]
        for block, here in at_block.items():
            self._handles.append(blocks[block].register_forward_hook(self._edit_hook(here)))
        self._plan: dict[Site, list[_Group]] | None = None
        self._layout: tuple[Any, list] | None = None
        self._requests: dict[str, tuple[str, tuple[SiteEdit, ...]] | None] = {}
        self._checks: list[tuple[_Group, Tensor]] = []
        self.failures: dict[str, dict[str, Any]] = {}

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def take_failures(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The failures of ``ids``, ``{"status", "message"}`` each (forgotten once read): 400
        when the request's own steering turned NaN/inf, 500 when the worker failed."""
        return {i: self.failures.pop(i) for i in ids if i in self.failures}

    # -- once per forward pass -----------------------------------------------------------
    def _observe(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        self._plan, self._checks = None, []
        try:
            self._plan = self._make_plan(kwargs.get("positions"))
        except Exception as error:  # never into vLLM: it would stop serving everyone
            logger.exception("hf_sae_steer: planning the batch's steering failed")
            self._fail_all(f"steering failed in the worker: {error}")

    def _make_plan(self, positions: Tensor | None) -> dict[Site, list[_Group]] | None:
        if positions is None or positions.ndim != 1:
            return None
        batch = self.runner.input_batch
        n = int(batch.num_reqs)
        req_ids = tuple(batch.req_ids[:n])
        starts = tuple(self.runner.query_start_loc.cpu[: n + 1].tolist())
        key = (req_ids, starts, positions.shape[0])
        if self._layout is None or self._layout[0] != key:  # decode steps repeat the layout
            self._layout = (key, self._lay_out(req_ids, starts, positions))
        layout = self._layout[1]
        if not layout:
            return None
        plan: dict[Site, list[_Group]] = {}
        for site, edits, index, bounds, whole, owners in layout:
            generated = bounds  # unused unless an edit steers prompt or generated positions
            if any(e.positions != "all" for e in edits):
                generated = positions.index_select(0, index).long() >= bounds
            plan.setdefault(site, []).append(_Group(edits, index, generated, whole, owners))
        return plan

    def _lay_out(self, req_ids: tuple[str, ...], starts: tuple[int, ...], positions: Tensor):
        """Which rows of this batch each group of identically steered requests holds."""
        if len(self._requests) > 4 * max(len(self.runner.requests), 16):
            self._requests = {r: s for r, s in self._requests.items() if r in self.runner.requests}
        total, device = positions.shape[0], positions.device
        by_site: dict[Site, dict[tuple[SiteEdit, ...], list[tuple[int, int, int, str]]]] = {}
        for i, req_id in enumerate(req_ids):
            found = self._steering_of(req_id)
            if found is None or starts[i + 1] == starts[i]:
                continue
            owner, edits = found
            prompt = int(self.runner.requests[req_id].num_prompt_tokens)
            sites: dict[Site, list[SiteEdit]] = {}
            for edit in edits:
                sites.setdefault(edit.site, []).append(edit)
            for site, at_site in sites.items():
                rows = by_site.setdefault(site, {}).setdefault(tuple(at_site), [])
                rows.append((starts[i], starts[i + 1], prompt, owner))
        layout = []
        for site, groups in by_site.items():
            for edits, spans in groups.items():
                lengths = np.array([b - a for a, b, _, _ in spans])
                first = np.array([a for a, _, _, _ in spans])
                offsets = np.repeat(first - np.cumsum(lengths) + lengths, lengths)
                rows = offsets + np.arange(int(lengths.sum()))
                bounds = np.repeat(np.array([p for _, _, p, _ in spans]), lengths)
                whole = rows.size == total and bool((rows == np.arange(total)).all())
                owners = tuple(dict.fromkeys(o for *_, o in spans))
                layout.append((
                    site, edits, torch.from_numpy(rows).to(device),
                    torch.from_numpy(bounds).to(device), whole, owners,
                ))  # fmt: skip
        return layout

    def _steering_of(self, req_id: str) -> tuple[str, tuple[SiteEdit, ...]] | None:
        """A request's steering id and edits, resolved once per request (None: unsteered)."""
        if req_id in self._requests:
            return self._requests[req_id]
        params = getattr(self.runner.requests[req_id], "sampling_params", None)
        extra = getattr(params, "extra_args", None) or {}
        found = extra.get(EXTRA_ARGS_KEY)
        entry = None
        if found:
            owner = str(found.get("id", req_id))
            try:
                resolved = self.library.resolve(parse_steering(found.get("steering")))
                entry = (owner, tuple(resolved.edits)) if resolved.edits else None
            except Exception as error:  # the front end validated it; this is a worker's bug
                logger.exception("hf_sae_steer: resolving request %s failed", owner)
                self.failures[owner] = _failure(500, f"steering failed in the worker: {error}")
        self._requests[req_id] = entry
        return entry

    def _finish(self, module: nn.Module, args: tuple, output: Any) -> None:
        """After the forward pass: one read of the non-finite flags (no sync per hook)."""
        checks, self._checks, self._plan = self._checks, [], None
        if not checks:
            return
        try:
            if not bool(torch.stack([bad.any() for _, bad in checks]).any()):
                return
            for group, bad in checks:
                rows = torch.nonzero(bad).flatten().tolist()
                if rows:
                    for owner in group.owners:  # coarse but safe: the whole group
                        self.failures.setdefault(owner, _failure(400, NONFINITE))
        except Exception:
            logger.exception("hf_sae_steer: reading the non-finite flags failed")

    def _fail_all(self, message: str) -> None:
        batch = self.runner.input_batch
        for rid in list(batch.req_ids[: int(batch.num_reqs)]):
            entry = self._requests.get(rid)
            if entry is not None:
                self.failures.setdefault(entry[0], _failure(500, message))

    # -- per steered block ---------------------------------------------------------------
    def _edit_hook(self, sites: list[Site]):  # noqa: ANN202 (a hook)
        def hook(module: nn.Module, args: tuple, output: Any) -> Any:
            plan = self._plan
            if plan is None or not any(site in plan for site in sites):
                return None
            try:
                return self._edit(plan, sites, output)
            except Exception as error:
                logger.exception("hf_sae_steer: steering hook failed")
                self._fail_all(f"steering failed in the worker: {error}")
                self._plan = None
                return None

        return hook

    def _edit(self, plan: dict[Site, list[_Group]], sites: list[Site], output: Any) -> Any:
        fused = isinstance(output, tuple)
        hidden, residual = (output[0], output[1]) if fused else (output, None)
        for site in sites:
            for group in plan.get(site, ()):
                if group.whole:
                    x = hidden if residual is None else hidden + residual
                else:
                    x = hidden.index_select(0, group.index)
                    if residual is not None:
                        x = x + residual.index_select(0, group.index)
                y = _apply(group, x)
                ok = torch.isfinite(y).all(dim=-1)
                y = torch.where(ok.unsqueeze(-1), y, x)  # a NaN must not reach the sampler
                self._checks.append((group, ~ok))
                if group.whole:
                    hidden = y
                    residual = None if residual is None else torch.zeros_like(residual)
                else:
                    hidden = hidden.index_copy(0, group.index, y)
                    if residual is not None:
                        residual = residual.index_fill(0, group.index, 0.0)
        if not fused:
            return hidden
        return (hidden, residual, *output[2:])


def _failure(status: int, message: str) -> dict[str, Any]:
    return {"status": status, "message": message}


def _apply(group: _Group, x: Tensor) -> Tensor:
    """The group's edits in order, each on the tokens its positions select."""
    y = x
    for edit in group.edits:
        if edit.positions == "all":
            y = edit.step(y)
            continue
        keep = group.generated if edit.positions == "generated" else ~group.generated
        y = torch.where(keep.unsqueeze(-1), edit.step(y), y)
    return y


def _find_blocks(model: nn.Module, path: str, n_layers: int) -> nn.ModuleList:
    """vLLM's block list: at the Hugging Face path (vLLM keeps the names for its weights), else
    the one ModuleList with as many entries as the model has layers."""
    obj: Any = model
    for part in path.split("."):
        obj = getattr(obj, part, None)
    if isinstance(obj, nn.ModuleList) and len(obj) == n_layers:
        return obj
    found = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) == n_layers]
    if len(found) != 1:
        raise ValueError(
            f"Cannot find the {n_layers} decoder blocks of {type(model).__name__} in vLLM "
            f"(looked for {path!r}); this architecture is not supported by the vLLM engine."
        )
    return found[0]


class SteeringWorkerExtension:
    """vLLM's ``worker_extension_cls``: methods every worker gains, called by ``collective_rpc``.
    Names carry a prefix so they never clash with the worker's own."""

    def hf_sae_steer_install(self, setup: dict[str, Any]) -> list[str]:
        """Load the library of ``setup`` (see :func:`build_library`) and hook this worker's
        model; returns the hooked sites' names."""
        old = getattr(self, "_hf_sae_steer", None)
        if old is not None:
            old.remove()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            library = build_library(setup)
        steering = WorkerSteering(self.model_runner, library)  # type: ignore[attr-defined]
        self._hf_sae_steer = steering
        return [site.hook_name for site in library.sites]

    def hf_sae_steer_failures(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        steering = getattr(self, "_hf_sae_steer", None)
        return {} if steering is None else steering.take_failures(ids)

    def hf_sae_steer_remove(self) -> None:
        steering = getattr(self, "_hf_sae_steer", None)
        if steering is not None:
            steering.remove()
            self._hf_sae_steer = None


def setup_json(setup: Mapping[str, Any]) -> dict[str, Any]:
    """``setup`` checked to be plain JSON (what crosses into the workers)."""
    return json.loads(json.dumps(dict(setup)))
