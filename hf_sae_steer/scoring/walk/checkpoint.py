"""Checkpoints of a scoring run: the sums so far and how far the reference stream got.

A checkpoint is one safetensors file: every sum of
:class:`~hf_sae_steer.scoring.walk.passes.ScoringSums` as a tensor, and the run's state as JSON in
the file's header metadata (``safe_open(path, "pt").metadata()["hf_sae_steer_checkpoint"]``), with a
sha256 of the state and of every tensor's bytes beside it. Nothing is pickled. It is written
atomically: a temporary file in the same folder, flushed to disk, then ``os.replace``; a failed
write leaves the previous checkpoint and no temporary file.

A checkpoint is checked before it is resumed, and refused with one :class:`CheckpointError`
naming the file: a damaged or edited file (the checksum), sums no run can produce (missing,
unknown, of the wrong dtype or shape, not finite, negative counts, counts that disagree), or
another run's (:func:`check_same_run`).

Under several processes the sums are summed across processes first and rank 0 writes them, so
a run can resume with any number of processes.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hf_sae_steer.atomic import write_atomically

FORMAT = "hf_sae_steer/scoring_checkpoint"
# 2: a checksum, and the model's weights (not its path) in the run's identity.
FORMAT_VERSION = 2
META_KEY = "hf_sae_steer_checkpoint"
CHECKSUM_KEY = "hf_sae_steer_sha256"
# Sums that only ever add non-negative terms: counts, activations (>= 0), d², norms, errors.
NON_NEGATIVE = ("num", "den", "act_sum", "ref_norm_sum", "ref_norm_raw_sum", "align_sq_sum",
                "align_sse", "align_act_sum")  # fmt: skip


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed: corrupt, crafted, of another run, or in use."""


@dataclass
class CheckpointState:
    """Where a scoring run stood: ``consumed`` reference prompts are in the sums (the first
    ``consumed`` of the stream, whose :meth:`~hf_sae_steer.data.prompts.PromptHash.prefix`
    is ``prefix``), along with the whole alignment set. ``run`` holds everything that must be
    the same to resume (SAE, model weights, site, summary, options, alignment set); the rule is
    not in it, since it only reads the sums."""

    run: dict[str, Any]
    consumed: int
    prefix: str
    source: str
    finished: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CheckpointState:
        return cls(
            run=dict(data["run"]),
            consumed=int(data["consumed"]),
            prefix=str(data["prefix"]),
            source=str(data.get("source", "")),
            finished=bool(data.get("finished", False)),
        )


def checksum(state_json: str, tensors: dict[str, Tensor]) -> str:
    """sha256 of the state's JSON and of every tensor's name, dtype, shape and bytes."""
    h = hashlib.sha256(state_json.encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous().reshape(-1)
        h.update(f"\0{name}\0{t.dtype}\0{tuple(tensors[name].shape)}\0".encode())
        h.update(memoryview(t.view(torch.uint8).numpy()))
    return h.hexdigest()


def write_checkpoint(path: str | Path, tensors: dict[str, Tensor], state: CheckpointState) -> None:
    """Write ``tensors`` and ``state`` to ``path`` atomically, with their checksum."""
    from safetensors.torch import save_file

    plain = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    text = json.dumps(state.to_json())
    metadata = {META_KEY: text, CHECKSUM_KEY: checksum(text, plain)}
    write_atomically(path, lambda tmp: save_file(plain, tmp, metadata))


def read_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], CheckpointState]:
    """The sums and the state of the checkpoint at ``path``, after checking its checksum."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
        text = metadata[META_KEY]
        data = json.loads(text)
        if not isinstance(data, dict):
            raise TypeError(type(data).__name__)
    except Exception as error:  # not safetensors (or torn), or safetensors of something else
        raise CheckpointError(
            f"{path} is not a scoring checkpoint of hf_sae_steer, or it is corrupt "
            f"({type(error).__name__}); it was not written by this command. Choose another "
            "--checkpoint path."
        ) from None
    if data.get("format") != FORMAT:
        found = data.get("format")
        raise CheckpointError(f"{path} is not a scoring checkpoint (format {found!r}).")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        raise CheckpointError(
            f"{path} has checkpoint format {version!r}; this hf_sae_steer reads format "
            f"{FORMAT_VERSION} only. "
            + ("Upgrade hf_sae_steer, or start the run afresh." if newer else
               "Finish it with the version that wrote it, or start the run afresh.")
        )  # fmt: skip
    if metadata.get(CHECKSUM_KEY) != checksum(text, tensors):
        raise CheckpointError(
            f"Checkpoint {path} is corrupt: its checksum does not match its contents (a damaged "
            "or edited file). Start the run afresh at another --checkpoint path."
        )
    try:
        return tensors, CheckpointState.from_json(data)
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(
            f"Checkpoint {path} is corrupt: its state lacks or garbles {error}."
        ) from None


def check_sums(
    path: str | Path, tensors: dict[str, Tensor], expected: dict[str, Tensor],
    state: CheckpointState,
) -> None:  # fmt: skip
    """Refuse sums that no scoring run writes: ``expected`` are zero sums of this run (names,
    dtypes, shapes); counts must be non-negative and agree with each other and the state."""

    def refuse(problem: str) -> CheckpointError:
        return CheckpointError(
            f"Checkpoint {path} is corrupt: {problem}. Start the run afresh at another "
            "--checkpoint path."
        )

    for name in sorted(set(tensors) - set(expected)):
        raise refuse(f"it holds an unknown tensor {name!r}")
    for name, want in expected.items():
        got = tensors.get(name)
        if got is None:
            raise refuse(f"it lacks the sum {name!r}")
        if got.dtype != want.dtype:
            kinds = (str(got.dtype).removeprefix("torch."), str(want.dtype).removeprefix("torch."))
            raise refuse(f"its sum {name!r} is {kinds[0]}, not {kinds[1]}")
        if got.shape != want.shape:
            raise refuse(f"its sum {name!r} has shape {tuple(got.shape)}, not {tuple(want.shape)}")
        if got.is_floating_point() and not torch.isfinite(got).all():
            raise refuse(f"its sum {name!r} is not finite (NaN or inf)")
        if (not got.is_floating_point() or name in NON_NEGATIVE) and (got < 0).any():
            raise refuse(f"its sum {name!r} is negative")
    t = {name: tensors[name] for name in expected}
    ref_n, align_n = int(t["ref_n"]), int(t["align_n"])
    if ref_n != state.consumed:
        raise refuse(
            f"it counts {ref_n} reference prompts in its sums but {state.consumed} in its state"
        )
    size = state.run.get("alignment_size", align_n)
    if align_n != size:
        raise refuse(f"it counts {align_n} alignment prompts in its sums but {size} in its run")
    if (t["ref_prompts"] > ref_n).any() or (t["align_prompts"] > align_n).any():
        raise refuse("a latent fires on more reference or alignment prompts than it counts")
    if (t["align_act_tokens"] > t["align_tokens"]).any():
        raise refuse("a latent is active on more alignment tokens than the sums count")
    if (t["act_tokens"] > t["ref_tokens"]).any():
        raise refuse("a latent is active on more reference tokens than it counts")
    fired = t["den"] > 0
    if not torch.equal(fired, t["ref_prompts"] > 0) or ((t["num"] > 0) & ~fired).any():
        raise refuse("latents fire without prompts to fire on (or the reverse)")
    if float(t["den"].sum()) > ref_n * (1 + 1e-9) + 1e-9:
        raise refuse("its activation mass exceeds one per reference prompt")


def existing_checkpoint(path: str | Path, resume: bool) -> bool:
    """Whether there is a checkpoint at ``path`` to resume; refuses to overwrite anything."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"Checkpoint path {path} is a folder; give a file (ckpt.safetensors).")
    if not path.exists():
        return False
    if not resume:
        raise ValueError(
            f"Checkpoint {path} already exists: pass resume=True (--resume) to continue that run, "
            "or choose another path (it is never overwritten by a new run)."
        )
    return True


def check_same_run(path: str | Path, saved: dict[str, Any], now: dict[str, Any]) -> None:
    """Refuse to resume a checkpoint that another run (other SAE, model weights, site, options,
    alignment set) wrote: one CheckpointError naming the first difference."""
    now = json.loads(json.dumps(now))  # as the checkpoint stored it (tuples are lists)
    for key in sorted(set(saved) | set(now)):
        if saved.get(key) != now.get(key):
            raise CheckpointError(
                f"Checkpoint {path} belongs to another run: its {key} is {saved.get(key)!r}, this "
                f"run's is {now.get(key)!r}. Resume with the same settings, or use another "
                "checkpoint path."
            )


def remove_stale_temporaries(path: str | Path) -> None:
    """Delete the temporaries a killed write of ``path`` left (``.<name>.XXXXXXXX.tmp``, as
    :func:`~hf_sae_steer.atomic.write_atomically` names them); nothing else. Only call it while
    holding the run's lock: then no other write of ``path`` is under way."""
    path = Path(path)
    ours = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.tmp")
    if not path.parent.is_dir():
        return
    for entry in path.parent.iterdir():
        if ours.fullmatch(entry.name) and entry.is_file() and not entry.is_symlink():
            entry.unlink(missing_ok=True)
