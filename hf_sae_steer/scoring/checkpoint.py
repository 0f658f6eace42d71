"""Checkpoints of a scoring run: the sums so far and how far the reference stream got.

A checkpoint is one safetensors file: every sum of
:class:`~hf_sae_steer.scoring.passes.ScoringSums` as a tensor, and the run's state as JSON in the
file's header metadata (``safe_open(path, "pt").metadata()["hf_sae_steer_checkpoint"]``).
Nothing is pickled. It is written atomically: a temporary file in the same folder, flushed to
disk, then ``os.replace``; a failed write leaves the previous checkpoint and no temporary file.

Under several processes the sums are summed across processes first and rank 0 writes them, so
a run can resume with any number of processes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from hf_sae_steer.atomic import write_atomically

FORMAT = "hf_sae_steer/scoring_checkpoint"
FORMAT_VERSION = 1
META_KEY = "hf_sae_steer_checkpoint"


@dataclass
class CheckpointState:
    """Where a scoring run stood: ``consumed`` reference prompts are in the sums (the first
    ``consumed`` of the stream, whose :meth:`~hf_sae_steer.scoring.prompts.PromptHash.prefix`
    is ``prefix``), along with the whole alignment set. ``run`` holds everything that must be
    the same to resume (SAE, site, summary, options, alignment set); the rule is not in it,
    since it only reads the sums."""

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


def write_checkpoint(path: str | Path, tensors: dict[str, Tensor], state: CheckpointState) -> None:
    """Write ``tensors`` and ``state`` to ``path`` atomically."""
    from safetensors.torch import save_file

    metadata = {META_KEY: json.dumps(state.to_json())}
    plain = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    write_atomically(path, lambda tmp: save_file(plain, tmp, metadata))


def read_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], CheckpointState]:
    """The sums and the state of the checkpoint at ``path``."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
        data = json.loads(metadata[META_KEY])
    except Exception as error:  # not safetensors, or safetensors of something else
        raise ValueError(
            f"{path} is not a scoring checkpoint of hf_sae_steer ({type(error).__name__}); "
            "it was not written by this command. Choose another --checkpoint path."
        ) from None
    if data.get("format") != FORMAT:
        raise ValueError(f"{path} is not a scoring checkpoint (format {data.get('format')!r}).")
    if int(data.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(
            f"{path} has checkpoint format {data['format_version']}; this hf_sae_steer reads up "
            f"to {FORMAT_VERSION}. Upgrade hf_sae_steer, or start the run afresh."
        )
    return tensors, CheckpointState.from_json(data)


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
    """Refuse to resume a checkpoint that another run (other SAE, site, options, alignment
    set) wrote: one ValueError naming the first difference."""
    now = json.loads(json.dumps(now))  # as the checkpoint stored it (tuples are lists)
    for key in sorted(set(saved) | set(now)):
        if saved.get(key) != now.get(key):
            raise ValueError(
                f"Checkpoint {path} belongs to another run: its {key} is {saved.get(key)!r}, this "
                f"run's is {now.get(key)!r}. Resume with the same settings, or use another "
                "checkpoint path."
            )
