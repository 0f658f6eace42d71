"""Prompt sets: loading them (Hub datasets, files, lists) and hashing them.

>>> load_prompts(["a prompt", "another"])
['a prompt', 'another']
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hf_sae_steer.data.prompt_files import check_utf8, is_blank, read_text, table_errors

# Column names picked automatically, in this order, when no single string column stands out.
# "0" is what pandas writes for an unnamed Series (the reference demo's CSV layout).
PREFERRED_COLUMNS = ("text", "prompt", "0")
HASH_PIECE = 1 << 20  # characters of a long prompt hashed at a time
FILE_SUFFIXES = (".csv", ".json", ".jsonl", ".parquet", ".txt")
# A local folder handed to ``datasets``: a saved dataset, or data files (and a card) only.
# Anything else (a home folder, /tmp) would have datasets scan the whole tree first.
SAVED_DATASET_FILES = ("state.json", "dataset_dict.json")
DATA_SUFFIXES = (*FILE_SUFFIXES, ".tsv", ".arrow")
COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".zip")
NOT_DATA_OK = ("readme.md", "license", "license.md", "license.txt", ".gitattributes")
MAX_FOLDER_ENTRIES = 10_000


def load_prompts(
    source: Any,
    column: str | None = None,
    split: str | None = None,
    config: str | None = None,
) -> list[str]:
    """Load a list of prompts from ``source``.

    ``source`` is a list of strings, a ``datasets.Dataset`` / ``DatasetDict``, a local ``.csv``,
    ``.json``, ``.jsonl``, ``.parquet`` or ``.txt`` file (one prompt per line), a local dataset
    folder, or a Hub dataset id (loaded with ``datasets.load_dataset(source, config, split=...)``;
    split strings such as ``"train[:20]"`` work). With ``column=None`` the column is picked when
    there is a single string column or one named ``text``, ``prompt`` or ``0``.
    """
    if isinstance(source, (str, Path)):
        return _from_path_or_id(source, column, split, config)
    # A Dataset object means datasets is already imported; lists need not pay for the import.
    datasets = sys.modules.get("datasets")
    if datasets is not None and isinstance(source, datasets.DatasetDict):
        return _from_dataset(pick_split(source, split), column, "the dataset")
    if datasets is not None and isinstance(source, datasets.Dataset):
        return _from_dataset(source, column, "the dataset")
    if isinstance(source, Sequence):
        return _check_strings(list(source), "the list")
    raise TypeError(
        f"Cannot load prompts from a {type(source).__name__}; pass a list of strings, a "
        "datasets.Dataset, a file path (csv, json, jsonl, parquet, txt) or a Hub dataset id."
    )


def _from_path_or_id(
    source: str | Path, column: str | None, split: str | None, config: str | None
) -> list[str]:
    path = Path(source).expanduser()
    suffix = path.suffix.lower()
    if path.is_file():
        return _slice(_from_file(path, suffix, column), split, str(path))
    check_local_path(path)
    if (suffix in FILE_SUFFIXES or isinstance(source, Path)) and not path.is_dir():
        raise FileNotFoundError(f"No such prompt file: {path}")
    # A local folder (data files or a repo clone) or a Hub dataset id: datasets resolves both.
    import datasets

    if is_saved_dataset(path):
        loaded: Any = datasets.load_from_disk(str(path))
    else:
        loaded = datasets.load_dataset(str(source), config, split=split)
    if isinstance(loaded, datasets.DatasetDict):
        loaded = pick_split(loaded, split)
    return _from_dataset(loaded, column, str(source))


def check_local_path(path: Path) -> None:
    """Refuse, before ``datasets`` sees it, a local path that is neither a regular file nor a
    dataset folder (a saved dataset, or a folder of data files only): one clear ValueError. A
    path that does not exist is left to the caller (a Hub id, or a missing file)."""
    if path.is_dir():
        if path.suffix.lower() in FILE_SUFFIXES:
            raise ValueError(f"{path} is a folder, not a prompt file.")
        odd = None if is_saved_dataset(path) else _not_data(path)
        if odd is not None:
            raise ValueError(
                f"{path} is a folder but not a dataset ({odd}): give a prompt file "
                f"({', '.join(FILE_SUFFIXES)}), a dataset saved with save_to_disk, a folder of "
                "data files only, or a Hub dataset id."
            )
    elif path.exists() and not path.is_file():
        raise ValueError(
            f"{path} is not a regular file (a FIFO, socket or device): give a prompt file "
            f"({', '.join(FILE_SUFFIXES)}), a dataset folder or a Hub dataset id."
        )


def is_saved_dataset(path: Path) -> bool:
    """Whether ``path`` is a folder written by ``Dataset(Dict).save_to_disk``."""
    return path.is_dir() and any((path / name).is_file() for name in SAVED_DATASET_FILES)


def _not_data(folder: Path) -> str | None:
    """Why ``folder`` is not a folder of data files (None when it is one): the first file that
    is not data, no data file at all, or too many entries to look at."""
    seen, found = 0, False
    for root, folders, files in os.walk(folder):
        folders[:] = sorted(f for f in folders if not f.startswith("."))  # .git, .cache: skipped
        for name in sorted(files):
            seen += 1
            if seen > MAX_FOLDER_ENTRIES:
                return f"more than {MAX_FOLDER_ENTRIES} files"
            lower = name.lower()
            stem = lower.rsplit(".", 1)[0] if lower.endswith(COMPRESSED) else lower
            if stem.endswith(DATA_SUFFIXES):
                found = True
            elif not name.startswith(".") and lower not in NOT_DATA_OK:
                inside = Path(root, name).relative_to(folder)
                return f"it holds {inside}, which is not a data file"
    return None if found else "it holds no data file"


def parse_slice(split: str, where: str) -> tuple[str, int | None, int | None]:
    """``"train[10:30]"`` -> ``("train", 10, 30)``; the name may be empty, the slice absent."""
    match = re.fullmatch(r"\s*(\w*)\s*(?:\[\s*(-?\d*)\s*:\s*(-?\d*)\s*\])?\s*", split)
    if match is None:
        raise ValueError(
            f"Cannot apply split {split!r} to {where}: a local file takes a slice such as "
            "'train[:20]' or '[10:30]' (percentages are for Hub datasets)."
        )
    name, start, stop = match.groups()
    return name, int(start) if start else None, int(stop) if stop else None


def _slice(prompts: list[str], split: str | None, where: str) -> list[str]:
    """A local file is one split; ``split`` may still take a slice of it: ``"train[:20]"``."""
    if split is None:
        return prompts
    _, start, stop = parse_slice(split, where)
    chosen = prompts[start:stop]
    if not chosen:
        raise ValueError(f"Split {split!r} leaves no prompts of the {len(prompts)} in {where}.")
    return chosen


def _from_file(path: Path, suffix: str, column: str | None) -> list[str]:
    try:
        return _parse_file(path, suffix, column)
    except UnicodeDecodeError as e:
        check_utf8(path)  # names the line
        raise ValueError(
            f"Prompt file {path} is not UTF-8 text ({e.reason} at byte {e.start}); save it as "
            "UTF-8."
        ) from None
    except json.JSONDecodeError as e:
        raise ValueError(
            f"Prompt file {path} is not valid JSON{'L' if suffix == '.jsonl' else ''} "
            f"(line {e.lineno}, column {e.colno}: {e.msg})."
        ) from None


def _parse_file(path: Path, suffix: str, column: str | None) -> list[str]:
    if suffix == ".txt":
        return _check_strings([line for line in read_text(path) if not is_blank(line)], str(path))
    if suffix in (".json", ".jsonl"):
        return _from_records(_read_json(path, suffix == ".jsonl"), column, str(path))
    if suffix == ".csv":
        return _from_csv(path, column)
    if suffix == ".parquet":
        return _from_frame(_read_frame(path, suffix), column, str(path))
    raise ValueError(
        f"Unsupported prompt file {path.name!r}; use one of {', '.join(FILE_SUFFIXES)}."
    )


def pick_split(dataset_dict: Any, split: str | None) -> Any:
    names = list(dataset_dict.keys())
    if split is not None:
        if split not in dataset_dict:
            raise ValueError(f"No split {split!r}; the splits are {names}.")
        return dataset_dict[split]
    if len(names) == 1:
        return dataset_dict[names[0]]
    if "train" in dataset_dict:
        return dataset_dict["train"]
    raise ValueError(f"Several splits and none named 'train': pass split= one of {names}.")


def _read_json(path: Path, lines: bool) -> list[Any] | dict[str, Any]:
    if not lines:
        return json.loads("\n".join(read_text(path)))
    records = []
    for number, line in enumerate(read_text(path), start=1):
        if not is_blank(line):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"Prompt file {path} is not valid JSONL (line {number}, column {e.colno}: "
                    f"{e.msg})."
                ) from None
    return records


def _read_frame(path: Path, suffix: str, **options: Any) -> Any:
    import pandas as pd

    if suffix == ".parquet":
        with table_errors(path, "Parquet"):
            return pd.read_parquet(path)
    # keep_default_na=False: an empty cell is "" (caught below), and "NA" stays a prompt.
    with table_errors(path, "CSV"):
        return pd.read_csv(path, keep_default_na=False, **options)


def _from_csv(path: Path, column: str | None) -> list[str]:
    """The prompt column of a CSV file, picked as in any table and read as text: a column of
    numbers is prompts "1", "2.50" (as the streamed source reads it), not numbers."""
    frame = _read_frame(path, ".csv")
    columns = {str(name): frame[name].tolist() for name in frame.columns}
    name = _pick(columns, column, str(path))
    if not all(isinstance(value, str) for value in columns[name]):
        columns[name] = _read_frame(path, ".csv", usecols=[name], dtype={name: str})[name].tolist()
    return _check_strings(columns[name], f"column {name!r} of {path}")


def _from_records(data: list[Any] | dict[str, Any], column: str | None, where: str) -> list[str]:
    """JSON: a list of strings, a list of objects, or an object of columns."""
    if isinstance(data, dict):
        columns = {str(k): list(v) for k, v in data.items() if isinstance(v, list)}
        if not columns:
            raise ValueError(f"{where} holds an object without list-valued columns.")
        return _from_columns(columns, column, where)
    if not isinstance(data, list):
        raise ValueError(f"{where} holds a JSON {type(data).__name__}, not a list of prompts.")
    if column is None and all(isinstance(row, str) for row in data):
        return _check_strings(data, where)
    if not all(isinstance(row, dict) for row in data):
        raise ValueError(f"{where} mixes objects and other values; expected one kind of row.")
    names = list(dict.fromkeys(k for row in data for k in row))
    columns = {str(k): [row.get(k) for row in data] for k in names}
    return _from_columns(columns, column, where)


def _from_frame(frame: Any, column: str | None, where: str) -> list[str]:
    columns = {str(name): frame[name].tolist() for name in frame.columns}
    return _from_columns(columns, column, where)


def _from_dataset(dataset: Any, column: str | None, where: str) -> list[str]:
    names = list(dataset.column_names)
    if column is None:
        strings = [
            n
            for n in names
            if getattr(dataset.features[n], "dtype", None) in ("string", "large_string")
        ]
        column = pick_column(names, strings, where)
    if column not in names:
        raise ValueError(f"No column {column!r} in {where}; the columns are {names}.")
    return _check_strings(list(dataset[column]), f"column {column!r} of {where}")


def _from_columns(columns: dict[str, list[Any]], column: str | None, where: str) -> list[str]:
    column = _pick(columns, column, where)
    return _check_strings(columns[column], f"column {column!r} of {where}")


def _pick(columns: dict[str, list[Any]], column: str | None, where: str) -> str:
    names = list(columns)
    if column is None:
        # The unnamed index pandas writes ("Unnamed: 0") is never a prompt column.
        candidates = [n for n in names if not n.startswith("Unnamed:")]
        strings = [n for n in candidates if all(isinstance(v, str) for v in columns[n])]
        column = pick_column(names, strings, where)
    if column not in columns:
        raise ValueError(f"No column {column!r} in {where}; the columns are {names}.")
    return column


def pick_column(names: list[str], strings: list[str], where: str) -> str:
    if len(strings) == 1:
        return strings[0]
    for name in PREFERRED_COLUMNS:
        if name in names:
            return name
    found = f"string columns {strings}" if strings else "no string column"
    raise ValueError(
        f"Cannot tell which column of {where} holds the prompts ({found}; all columns: {names}). "
        "Pass column='...'."
    )


def _check_strings(values: list[Any], where: str) -> list[str]:
    if not values:
        raise ValueError(empty_message(where))
    for i, value in enumerate(values):
        check_prompt(value, i, where)
    return values


def empty_message(where: str) -> str:
    return f"No prompts in {where}: the prompt set is empty."


def check_prompt(value: Any, row: int, where: str) -> str:
    """``value`` if it is a usable prompt (a non-blank string), else one clear ValueError."""
    if not isinstance(value, str):
        kind = type(value).__name__
        raise ValueError(f"Row {row} of {where} is {kind} ({value!r}), not a string.")
    if is_blank(value):  # not value.strip(): no copy of a long prompt
        raise ValueError(f"Row {row} of {where} is an empty prompt.")
    return value


def hash_prompts(prompts: Sequence[str]) -> str:
    """A short content hash of a prompt set, to record which sets produced a score artifact."""
    return hashlib.sha256(json.dumps(list(prompts), ensure_ascii=False).encode()).hexdigest()[:16]


class PromptHash:
    """:func:`hash_prompts` of a stream, one prompt at a time (equal for the same prompts).

    The hash is of the JSON list ``["a", "b"]``, so it is fed ``[``, each prompt's JSON with
    ``", "`` between them, and ``]`` when read. :meth:`prefix` identifies the prompts seen so far
    (a checkpoint records it, and a resumed run checks the same prompts came first).
    """

    def __init__(self) -> None:
        self._sha = hashlib.sha256(b"[")
        self.count = 0

    def update(self, prompt: str) -> None:
        if self.count:
            self._sha.update(b", ")
        if len(prompt) <= HASH_PIECE:
            self._sha.update(json.dumps(prompt, ensure_ascii=False).encode())
        else:  # JSON escapes character by character: the pieces' escapes join to the whole's
            self._sha.update(b'"')
            for start in range(0, len(prompt), HASH_PIECE):
                piece = json.dumps(prompt[start : start + HASH_PIECE], ensure_ascii=False)
                self._sha.update(piece[1:-1].encode())
            self._sha.update(b'"')
        self.count += 1

    def prefix(self) -> str:
        """The full sha256 of the prompts so far (not a :func:`hash_prompts` value)."""
        return self._sha.copy().hexdigest()

    def hexdigest(self) -> str:
        """:func:`hash_prompts` of every prompt fed so far."""
        final = self._sha.copy()
        final.update(b"]")
        return final.hexdigest()[:16]
