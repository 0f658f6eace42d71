"""Writing files atomically: a temporary file in the same folder, flushed to disk, then renamed
over the target, so a reader sees the old file or the new one, never half of one. A failed
write leaves the old file and no temporary."""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Callable
from pathlib import Path


def write_atomically(path: str | os.PathLike[str], write: Callable[[str], None]) -> Path:
    """Call ``write(temporary_path)``, then move the result to ``path``; returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    mode = _create(tmp)
    try:
        write(str(tmp))
        os.chmod(tmp, mode)  # writers that replace the file (safetensors) leave it 0600
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())  # on disk before it replaces the last good file
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def new_file_mode(folder: str | os.PathLike[str]) -> int:
    """The permissions a file created in ``folder`` gets (0666 less the umask)."""
    probe = Path(folder) / f".mode-{uuid.uuid4().hex[:12]}"
    mode = _create(probe)
    probe.unlink()
    return mode


def _create(path: Path) -> int:
    """Create an empty ``path`` like any new file, not 0600 as ``mkstemp`` would (a shared
    folder's group can then read what we write there); returns its permissions."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    return stat.S_IMODE(os.stat(path).st_mode)


def write_text_atomically(path: str | os.PathLike[str], text: str) -> Path:
    return write_atomically(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
