"""Output folders: never overwrite what we did not write, and never leave half an artifact.

Every writer of a multi-file output (a score artifact, an SAE folder, an evaluation) goes
through :func:`write_folder`: it refuses a folder that holds files it did not write (unless
``overwrite``), fills a hidden temporary folder beside the target, and swaps it in with renames,
so a reader sees the old folder or the new one, never a mix; a failed write removes its
temporary folder. A process killed mid-write leaves only a hidden ``.NAME.tmp-*`` folder, which
the next write to the same target removes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Collection
from pathlib import Path

STALE_SECONDS = 600  # a temporary folder this old belongs to a write that died


def check_output_folder(
    path: str | os.PathLike[str],
    produced: Collection[str],
    *,
    overwrite: bool = False,
    is_ours: Callable[[Path], bool] | None = None,
) -> Path:
    """``path`` as a Path, if a write of the files ``produced`` may go there.

    Allowed: a new or empty folder; a folder that ``is_ours`` recognises as an earlier output of
    the same kind and that holds nothing else; anything but a file with ``overwrite``.
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} is a file, not a folder: pass a folder to write into.")
    if not path.is_dir() or overwrite:
        return path
    present = sorted(p.name for p in path.iterdir())
    ours = is_ours is not None and is_ours(path)
    foreign = [name for name in present if not (ours and name in produced)]
    if foreign:
        shown = ", ".join(foreign[:4]) + (", ..." if len(foreign) > 4 else "")
        raise FileExistsError(
            f"{path} already holds files this command did not write ({shown}); pass a new or "
            "empty folder, or overwrite (--overwrite, overwrite=True) to replace its "
            f"{', '.join(sorted(produced))}."
        )
    return path


def write_folder(
    path: str | os.PathLike[str],
    produced: Collection[str],
    write: Callable[[Path], None],
    *,
    overwrite: bool = False,
    is_ours: Callable[[Path], bool] | None = None,
) -> Path:
    """Run ``write(folder)`` on a fresh temporary folder, then make it ``path`` atomically.

    With ``overwrite``, files of ``path`` that are not among ``produced`` are kept (moved into
    the new folder); only ours are replaced.
    """
    path = check_output_folder(path, produced, overwrite=overwrite, is_ours=is_ours)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        write(tmp)
        if path.is_dir():
            for item in path.iterdir():
                if item.name not in produced:
                    os.replace(item, tmp / item.name)  # same filesystem: a rename, not a copy
            old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _remove_stale(path: Path) -> None:
    now = time.time()
    for pattern in (f".{path.name}.tmp-*", f".{path.name}.old-*"):
        for leftover in path.parent.glob(pattern):
            if leftover.is_dir() and now - leftover.stat().st_mtime > STALE_SECONDS:
                shutil.rmtree(leftover, ignore_errors=True)
