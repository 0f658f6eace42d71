"""Per-row steering of a batched forward pass: every batch row gets its own edits.

:class:`SteeredModel` steers every row of a batch the same way. A server batches requests that
each carry their own steering, so :class:`BatchedSteering` hooks the model once and, for each
forward pass, applies to each batch row that row's own :data:`RowSteering`: a tuple of
:class:`SiteEdit` (a site, an :class:`~hf_sae_steer.steering.interventions.Intervention` from
the one method table, and the positions it steers). An empty tuple is the base model.

The caller (a scheduler, the only thread that runs the model's forward passes) describes each
forward pass with a :class:`BatchRows` inside ``with steering.rows(batch): model(...)``:

- ``steerings[r]``: row ``r``'s edits;
- ``offsets[r]``: the index, in row ``r``'s own sequence, of the forward's first column (with
  left padding a prefill row of length ``L`` padded to ``S`` has offset ``L - S``, so its pads
  have negative indices; a decode step of a row holding ``n`` tokens has offset ``n``);
- ``prompt_lengths[r]``: row ``r``'s own prompt length, so ``positions="generated"`` means
  "index >= prompt length" per row, exactly as SteeredModel's position tracker decides it for
  a request run alone.

How rows are grouped (the contract the hooks keep):

- Rows whose edits at a site are the same objects are one group: the intervention runs once on
  those rows (``index_select``, then ``index_copy`` back). Interventions are elementwise or
  per-token (``add``/``vector`` add a constant vector, scaled per token for SAEs that normalise
  their input), so a row steered inside a batch gets the values it gets alone.
- Several edits of one row at the same site apply in the order the row lists them (the order a
  SteeredModel built from the same specs applies them).
- Outside ``rows()`` (another thread, or no batch set) the hooks change nothing.
- A row whose steered state turns NaN/inf is reported by :meth:`BatchedSteering.nonfinite_rows`
  after the forward pass (one device flag per row, read once); other rows are unaffected.

Nothing here schedules, tokenizes or parses requests: that is :mod:`hf_sae_steer.serving`.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from hf_sae_steer.sites.hooks import hook_site, steering_hooks
from hf_sae_steer.sites.layouts import ModelLayout, find_layout
from hf_sae_steer.sites.names import Site
from hf_sae_steer.steering import live
from hf_sae_steer.steering.positions import POSITIONS, Positions


@dataclass(frozen=True, eq=False)
class SiteEdit:
    """One edit of one request: ``step`` (an Intervention, or any ``x -> x'`` function on
    ``[rows, seq, d]``) at ``site``, on the tokens ``positions`` selects. Compared by identity:
    two rows share a group when they hold the same SiteEdit objects."""

    site: Site
    step: Callable[[Tensor], Tensor]
    positions: Positions = "all"

    def __post_init__(self) -> None:
        if self.positions not in POSITIONS:
            raise ValueError(
                f"Unknown positions {self.positions!r}; use one of {', '.join(POSITIONS)}."
            )


# A row's steering: its edits, in the order they apply; () is the base model.
RowSteering = tuple[SiteEdit, ...]


@dataclass
class BatchRows:
    """One forward pass as rows: each row's steering, the index of the forward's first column in
    the row's own sequence, and the row's prompt length (see the module docstring)."""

    steerings: Sequence[RowSteering]
    offsets: Sequence[int]
    prompt_lengths: Sequence[int]
    _plan: _Plan = field(init=False, repr=False)

    def __post_init__(self) -> None:
        n = len(self.steerings)
        if len(self.offsets) != n or len(self.prompt_lengths) != n:
            raise ValueError("BatchRows needs one offset and one prompt length per row.")
        self._plan = _plan(tuple(self.steerings))

    def groups(self, site: Site) -> list[_Group]:
        return self._plan.groups.get(site, [])

    @property
    def sites(self) -> frozenset[Site]:
        return self._plan.sites


class _Group:
    """Rows with the same edits at one site."""

    def __init__(self, edits: RowSteering, rows: list[int], batch: int) -> None:
        self.edits = edits
        self.rows = rows
        self.whole = len(rows) == batch  # every row: no gather/scatter
        self._index: dict[torch.device, Tensor] = {}

    def index(self, device: torch.device) -> Tensor:
        if device not in self._index:
            self._index[device] = torch.tensor(self.rows, device=device)
        return self._index[device]


@dataclass(frozen=True)
class _Plan:
    """The groups of one batch composition, per site (kept across the steps of a batch)."""

    groups: dict[Site, list[_Group]]
    sites: frozenset[Site]


_PLANS: OrderedDict[tuple[RowSteering, ...], _Plan] = OrderedDict()
_PLANS_KEPT = 64  # batch compositions remembered (a decode loop reuses one for many steps)
_PLANS_LOCK = threading.Lock()


def _plan(steerings: tuple[RowSteering, ...]) -> _Plan:
    with _PLANS_LOCK:
        plan = _PLANS.get(steerings)
        if plan is not None:
            _PLANS.move_to_end(steerings)
            return plan
    by_site: dict[Site, dict[RowSteering, list[int]]] = {}
    for row, edits in enumerate(steerings):
        sites: dict[Site, list[SiteEdit]] = {}
        for edit in edits:
            sites.setdefault(edit.site, []).append(edit)
        for site, at_site in sites.items():
            by_site.setdefault(site, {}).setdefault(tuple(at_site), []).append(row)
    n = len(steerings)
    plan = _Plan(
        {site: [_Group(e, rows, n) for e, rows in groups.items()] for site, groups in
         by_site.items()},
        frozenset(by_site),
    )  # fmt: skip
    with _PLANS_LOCK:
        _PLANS[steerings] = plan
        while len(_PLANS) > _PLANS_KEPT:
            _PLANS.popitem(last=False)
    return plan


class _State(threading.local):
    def __init__(self) -> None:
        self.batch: BatchRows | None = None
        self.finite: list[tuple[Tensor | None, Tensor]] = []  # (rows or None: all, flags)


class BatchedSteering:
    """Hooks at ``sites`` of ``model`` that steer each batch row with its own edits.

    Example:
        >>> batched = BatchedSteering(model, [Site(2, "resid_post")])      # doctest: +SKIP
        >>> rows = BatchRows([(SiteEdit(site, step),), ()], offsets=[0, 0], prompt_lengths=[5, 5])
        >>> with batched.rows(rows):
        ...     out = model(input_ids, attention_mask=mask)
        >>> batched.remove()

    Edits may only name the sites given here (hooks are registered once, in SteeredModel's
    order: ``resid_pre`` first, ``resid_post`` last-first, so edits apply in request order).
    A model steered by a SteeredModel is refused, and vice versa, while this is installed.
    """

    def __init__(
        self, model: nn.Module, sites: Sequence[Site], *, layout: ModelLayout | None = None
    ) -> None:
        if live.live_steerings(model) or any(h.live for *_, h in steering_hooks(model)):
            raise RuntimeError(
                "This model is already steered; call .remove() on its SteeredModel (or "
                "hf_sae_steer.remove_steering(model)) before batching per-row steering."
            )
        self.model = model
        self.layout = layout or find_layout(model)
        self.sites: tuple[Site, ...] = tuple(dict.fromkeys(sites))
        self._state = _State()
        self._handles: list[RemovableHandle] = []
        try:
            for site in _hook_order(self.sites):
                self._handles += hook_site(self.layout, site, self._edit_at(site))
        except BaseException:
            self.remove()
            raise
        live.register(model, self)

    @contextlib.contextmanager
    def rows(self, batch: BatchRows) -> Iterator[None]:
        """Steer this thread's forward passes inside the block row by row, as ``batch`` says."""
        unknown = batch.sites - set(self.sites)
        if unknown:
            names = ", ".join(sorted(site.hook_name for site in unknown))
            raise ValueError(f"No steering hook at {names}; build BatchedSteering with it.")
        state = self._state
        previous = state.batch, state.finite
        state.batch, state.finite = batch, []
        try:
            yield
        finally:
            self._last = (len(batch.steerings), state.finite)
            state.batch, state.finite = previous

    def nonfinite_rows(self) -> list[int]:
        """Rows whose steered state was NaN/inf in the last ``rows()`` block (reads the device)."""
        n, checks = getattr(self, "_last", (0, []))
        bad: set[int] = set()
        for rows, finite in checks:
            flags = finite.tolist()
            bad.update(r for r, ok in zip(rows if rows is not None else range(n), flags,
                                          strict=True) if not ok)  # fmt: skip
        return sorted(bad)

    def suspended(self) -> contextlib.AbstractContextManager[object]:
        """The live-steering registry's switch: no rows, so the hooks change nothing."""
        return _no_rows(self._state)

    def remove(self) -> None:
        """Remove every hook: the model is exactly as it was given."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        live.unregister(self.model, self)

    def __enter__(self) -> BatchedSteering:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    # -- the hook's edit -----------------------------------------------------------------
    def _edit_at(self, site: Site) -> Callable[[Tensor], Tensor]:
        def edit(x: Tensor) -> Tensor:
            state = self._state
            batch = state.batch
            if batch is None:
                return x
            out = x
            for group in batch.groups(site):
                if group.whole:
                    out = self._apply(group, out, batch, state, None)
                else:
                    index = group.index(x.device)
                    rows = self._apply(group, out.index_select(0, index), batch, state, index)
                    out = out.index_copy(0, index, rows)
            return out

        return edit

    @staticmethod
    def _apply(
        group: _Group, x: Tensor, batch: BatchRows, state: _State, index: Tensor | None
    ) -> Tensor:
        seq = x.shape[-2]
        y = x
        for edit in group.edits:
            keep = _keep(edit.positions, group.rows, batch, seq, x.device)
            if keep is True:
                y = edit.step(y)
            elif keep is not False:
                y = torch.where(keep.unsqueeze(-1), edit.step(y), y)
        if y is not x:  # one device flag per row, read after the forward: no sync here
            # A sum is NaN/inf when any term is (or when finite states overflow float32).
            finite = torch.isfinite(y.sum(dim=(-2, -1)))
            state.finite.append((None if index is None else group.rows, finite))
        return y


def _keep(
    positions: Positions, rows: list[int], batch: BatchRows, seq: int, device: torch.device
) -> Tensor | bool:
    """Which tokens of the group's rows ``positions`` steers: a bool when uniform, else
    ``[rows, seq]``. A token's index in its row is ``offset + column``; it was generated when
    that index is at least the row's prompt length."""
    if positions == "all":
        return True
    starts = [batch.offsets[r] for r in rows]
    bounds = [batch.prompt_lengths[r] for r in rows]
    if all(s >= b for s, b in zip(starts, bounds, strict=True)):
        generated: Tensor | bool = True
    elif all(s + seq <= b for s, b in zip(starts, bounds, strict=True)):
        generated = False
    else:
        index = torch.tensor(starts, device=device).unsqueeze(1) + torch.arange(seq, device=device)
        generated = index >= torch.tensor(bounds, device=device).unsqueeze(1)
    if isinstance(generated, bool):
        return generated == (positions == "generated")
    return generated if positions == "generated" else ~generated


def _hook_order(sites: Sequence[Site]) -> list[Site]:
    """SteeredModel's registration order: resid_pre first (a resid_mid hook reads the edited
    block input), resid_post last-first (those hooks are prepended)."""
    pre = [s for s in sites if s.kind == "resid_pre"]
    post = [s for s in sites if s.kind == "resid_post"]
    rest = [s for s in sites if s.kind not in ("resid_pre", "resid_post")]
    return pre + rest + post[::-1]


@contextlib.contextmanager
def _no_rows(state: _State) -> Iterator[None]:
    previous = state.batch
    state.batch = None
    try:
        yield
    finally:
        state.batch = previous
