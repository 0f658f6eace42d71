"""Output folders: never replace, move or delete a file we did not write.

Every writer of a multi-file output (a score artifact, an SAE folder, an evaluation) goes
through :func:`write_folder`:

- The target is resolved first: ``.``, ``""``, ``x/..`` and a symbolic link all name the real
  folder they lead to, and that folder is written *in place*. Its files are written into a hidden
  staging folder inside it and renamed over their old versions one by one, so every rename stays
  on the target's own filesystem (a mount point works) and no file of the user's ever moves.
- A manifest (:data:`MANIFEST`) records the SHA-256 of every file we wrote. A file with one of
  our names is ours only while it matches, so a model card you edited is yours. A folder holding
  anything of yours is refused unless ``overwrite``, which keeps all of it: your own model card
  stays (ours is left out), and any other file of yours under one of our names is refused.
- Writers hold the folder's lock (:mod:`~hf_sae_steer.locking`) for the whole write, so several
  writers take turns; a staging folder met under the lock is a dead writer's (it holds only what
  that writer wrote) and is removed.

A reader can meet a mix of old and new files while they are renamed; score artifacts record the
hash of their scores and refuse a mix on loading.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Collection
from pathlib import Path

from hf_sae_steer.atomic import new_file_mode
from hf_sae_steer.locking import folder_lock

OURS_PREFIX = ".hf_sae_steer-"  # our bookkeeping in the folder: never counted as the user's
MANIFEST = f"{OURS_PREFIX}manifest.json"
STAGING_PREFIX = f"{OURS_PREFIX}tmp-"
Manifest = dict[str, list[str]]  # file name -> SHA-256 of the versions we wrote


def output_folder(path: str | os.PathLike[str]) -> Path:
    """The real folder ``path`` names (links, ``.`` and ``..`` resolved); it may not exist yet."""
    given = Path(path).expanduser()
    real = Path(os.path.realpath(given))
    if given.is_symlink() and not real.exists():
        raise FileNotFoundError(
            f"{given} is a link to {real}, which does not exist: create that folder, or pass "
            "another one."
        )
    if real.exists() and not real.is_dir():
        raise FileExistsError(f"{given} is a file, not a folder: pass a folder to write into.")
    return real


def check_writable(folder: str | os.PathLike[str]) -> None:
    """Refuse, before any work, a folder that could not be created or written into."""
    folder = Path(os.path.realpath(Path(folder).expanduser()))
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise NotADirectoryError(f"Cannot create {folder}: {existing} is a file.")
    try:
        fd, probe = tempfile.mkstemp(prefix=f"{OURS_PREFIX}probe-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise PermissionError(
            f"Cannot write into {existing} ({error.strerror}): pass a folder you can write to."
        ) from None


def check_output_folder(
    path: str | os.PathLike[str],
    produced: Collection[str],
    *,
    overwrite: bool = False,
    is_ours: Callable[[Path], bool] | None = None,
    optional: Collection[str] = (),
) -> Path:
    """The real folder ``path`` names, if a write of the files ``produced`` may go there.

    Allowed: a new or empty folder, or one holding only our earlier files of these names; with
    ``overwrite``, also a folder holding other files (they are kept). Never: a folder holding a
    file of the user's under one of our names, but for the ``optional`` ones (their file is kept
    and ours left out). ``is_ours`` recognises an earlier output written without a manifest.
    """
    target = output_folder(path)
    check_writable(target)
    if target.is_dir():
        with folder_lock(target):  # not while another writer moves its files in
            _files_to_write(target, produced, overwrite, is_ours, optional)
    return target


def write_folder(
    path: str | os.PathLike[str],
    produced: Collection[str],
    write: Callable[[Path], None],
    *,
    overwrite: bool = False,
    is_ours: Callable[[Path], bool] | None = None,
    optional: Collection[str] = (),
) -> Path:
    """Run ``write(folder)`` on an empty staging folder, then move the files ``produced`` from it
    into ``path`` (see :func:`check_output_folder`); returns the real folder written."""
    target = output_folder(path)
    check_writable(target)
    target.mkdir(parents=True, exist_ok=True)
    with folder_lock(target):
        names = _files_to_write(target, produced, overwrite, is_ours, optional)
        for dead in target.glob(f"{STAGING_PREFIX}*"):
            shutil.rmtree(dead, ignore_errors=True)
        staging = target / f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
        staging.mkdir()  # 0777 less the umask, the parent's group: like any folder
        try:
            write(staging)
            mode = new_file_mode(staging)
            for name in names:
                os.chmod(staging / name, mode)  # some writers (safetensors) make files 0600
            new = {name: [_sha256(staging / name)] for name in names}
            old = _read_manifest(target) or {}
            kept = {name: h for name, h in old.items()
                    if name not in produced and (target / name).is_file()}  # fmt: skip
            # While the files move, both versions are ours: a crash between two renames leaves a
            # folder the next write still recognises.
            replaced = {name: [_sha256(target / name)] for name in names
                        if (target / name).is_file()}  # fmt: skip
            both = {name: new[name] + replaced.get(name, []) for name in names}
            _write_manifest(staging, target, {**kept, **both})
            for name in names:
                os.replace(staging / name, target / name)
            _write_manifest(staging, target, {**kept, **new})
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _files_to_write(
    target: Path,
    produced: Collection[str],
    overwrite: bool,
    is_ours: Callable[[Path], bool] | None,
    optional: Collection[str],
) -> list[str]:
    """The names to write into ``target``, or an error saying which files of the user's are in
    the way."""
    theirs = _not_ours(target, produced, is_ours)
    if theirs and not overwrite:
        shown = ", ".join(theirs[:4]) + (", ..." if len(theirs) > 4 else "")
        raise FileExistsError(
            f"{target} already holds files this command did not write ({shown}); pass a new or "
            "empty folder, or overwrite (--overwrite, overwrite=True) to write beside them "
            "(they are kept)."
        )
    clashes = [name for name in theirs if name in produced]
    refused = [name for name in clashes if name not in optional]
    if refused:
        raise FileExistsError(
            f"{target} holds a {refused[0]} that this command did not write, and it would have "
            "to replace it: move that file away, or pass another folder."
        )
    return [name for name in produced if name not in clashes]


def _not_ours(
    target: Path, produced: Collection[str], is_ours: Callable[[Path], bool] | None
) -> list[str]:
    """The entries of ``target`` we did not write (or wrote as another kind of output)."""
    if not target.is_dir():
        return []
    manifest = _read_manifest(target)
    earlier = manifest is None and is_ours is not None and is_ours(target)  # before manifests
    theirs = []
    for name in sorted(os.listdir(target)):
        if name.startswith(OURS_PREFIX):
            continue
        if name not in produced:
            theirs.append(name)
        elif not earlier and not _matches(manifest or {}, target / name):
            theirs.append(name)
    return theirs


def _matches(manifest: Manifest, path: Path) -> bool:
    return path.is_file() and _sha256(path) in manifest.get(path.name, [])


def _read_manifest(folder: Path) -> Manifest | None:
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        files = data["files"]
    except (OSError, ValueError, TypeError, KeyError, RecursionError):
        return None
    if not isinstance(files, dict):
        return None
    return {name: [h for h in hashes if isinstance(h, str)] for name, hashes in files.items()
            if isinstance(name, str) and isinstance(hashes, list)}  # fmt: skip


def _write_manifest(staging: Path, target: Path, files: Manifest) -> None:
    text = json.dumps({"written_by": "hf_sae_steer", "files": files}, indent=1, sort_keys=True)
    (staging / MANIFEST).write_text(text + "\n", encoding="utf-8")
    os.replace(staging / MANIFEST, target / MANIFEST)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
