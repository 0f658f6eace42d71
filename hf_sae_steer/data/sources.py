"""Prompt sources: prompts read lazily and in order, from a list, a large local file or a
(streamed) dataset, so that a reference set never has to fit in memory.

>>> source = open_prompts("reference.jsonl", column="text")     # doctest: +SKIP
>>> for prompt in source: ...                                   # one row at a time

Local ``.txt`` (one prompt per line), ``.jsonl``, ``.csv`` and ``.parquet`` files are read a
block of rows at a time; ``datasets`` objects (``load_dataset(..., streaming=True)`` too) row by
row; a ``.json`` file (one JSON document) is read whole. Every source yields exactly the prompts
:func:`~hf_sae_steer.data.prompts.load_prompts` returns for the same arguments, checked the
same way, and bad input (a missing file, no prompt column) fails when the source is opened.
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hf_sae_steer.data.prompt_files import check_utf8, is_blank, table_errors, text_lines
from hf_sae_steer.data.prompts import (
    FILE_SUFFIXES,
    check_local_path,
    check_prompt,
    empty_message,
    is_saved_dataset,
    load_prompts,
    parse_slice,
    pick_column,
    pick_split,
)

ROWS_PER_READ = 4096  # rows read at a time from csv, parquet and datasets
STREAMED_SUFFIXES = (".txt", ".jsonl", ".csv", ".parquet")


@dataclass
class PromptSource:
    """Prompts read in order, each time the source is iterated.

    ``rows`` returns a fresh iterator over the raw values of the prompt column; iterating the
    source checks each one (a non-blank string) and raises on an empty set. ``size`` is the
    number of prompts when known without reading them (lists, parquet, datasets), else None.
    """

    where: str
    rows: Callable[[], Iterable[Any]]
    size: int | None = None
    start: int | None = None  # a slice of the rows (split="train[10:30]"), non-negative
    stop: int | None = None

    def __iter__(self) -> Iterator[str]:
        rows = enumerate(self.rows())
        if self.start is not None or self.stop is not None:
            rows = itertools.islice(rows, self.start, self.stop)
        count = 0
        for row, value in rows:
            yield check_prompt(value, row, self.where)
            count += 1
        if count == 0:
            raise ValueError(empty_message(self.where))

    @property
    def known_size(self) -> int | None:
        """How many prompts iterating will yield, when known without reading them."""
        if self.size is None:
            return None
        return len(range(self.size)[self.start : self.stop])


def open_prompts(
    source: Any,
    column: str | None = None,
    split: str | None = None,
    config: str | None = None,
    *,
    streaming: bool = False,
) -> PromptSource:
    """A :class:`PromptSource` for anything :func:`load_prompts` takes, and more.

    ``source``: a :class:`PromptSource`, a list of strings, any other iterable of strings (read
    once), a ``datasets`` ``Dataset``/``IterableDataset`` (or their dicts), a local file or
    dataset folder, or a Hub dataset id, which ``streaming=True`` reads with
    ``load_dataset(..., streaming=True)`` instead of downloading it whole. ``split`` takes a
    slice of rows (``"train[:1000]"``) from files and streams too; negative bounds need the
    whole set, so they load it (:func:`load_prompts`).
    """
    if isinstance(source, PromptSource):
        return source
    if isinstance(source, str | Path):
        return _from_path_or_id(source, column, split, config, streaming)
    # A dataset object means datasets is already imported; lists need not pay for the import.
    datasets = sys.modules.get("datasets")
    kinds = () if datasets is None else (
        datasets.Dataset, datasets.DatasetDict, datasets.IterableDataset,
        datasets.IterableDatasetDict,
    )  # fmt: skip
    if kinds and isinstance(source, kinds):
        return _from_dataset(source, column, split, "the dataset")
    if isinstance(source, Sequence) and not isinstance(source, bytes):
        values = list(source)
        return PromptSource("the list", lambda: values, size=len(values))
    if isinstance(source, Iterable) and not isinstance(source, Mapping):
        return PromptSource("the prompts", lambda: source)
    raise TypeError(
        f"Cannot read prompts from a {type(source).__name__}; pass a list of strings, a "
        "datasets.Dataset or IterableDataset, a file path (csv, json, jsonl, parquet, txt) or a "
        "Hub dataset id."
    )


def _from_path_or_id(
    source: str | Path, column: str | None, split: str | None, config: str | None, streaming: bool
) -> PromptSource:
    path = Path(source).expanduser()
    suffix = path.suffix.lower()
    if path.is_file() and suffix in STREAMED_SUFFIXES:
        _, start, stop = parse_slice(split, str(path)) if split else ("", None, None)
        if (start or 0) < 0 or (stop or 0) < 0:
            return _whole(load_prompts(path, column, split), str(path))
        opened = _FILE_READERS[suffix](path, column, str(path))
        opened.start, opened.stop = start, stop
        return opened
    check_local_path(path)
    if path.is_file() or ((suffix in FILE_SUFFIXES or isinstance(source, Path))
                          and not path.is_dir()):  # fmt: skip
        # .json is one document: read whole. A missing file: load_prompts says so.
        return _whole(load_prompts(source, column, split, config), str(source))
    import datasets

    if not streaming:  # Arrow files, memory-mapped: read in batches all the same
        if is_saved_dataset(path):
            loaded: Any = datasets.load_from_disk(str(path))
        else:
            loaded = datasets.load_dataset(str(source), config, split=split)
        return _from_dataset(loaded, column, split, str(source))
    name, start, stop = parse_slice(split, str(source)) if split else ("", None, None)
    if (start or 0) < 0 or (stop or 0) < 0:
        raise ValueError(
            f"A streamed dataset cannot take the negative slice {split!r}; use non-negative "
            "bounds, or drop streaming to load the whole set."
        )
    loaded = datasets.load_dataset(str(source), config, split=name or None, streaming=True)
    opened = _from_dataset(loaded, column, None, str(source))
    opened.start, opened.stop = start, stop
    return opened


def _whole(prompts: list[str], where: str) -> PromptSource:
    return PromptSource(where, lambda: prompts, size=len(prompts))


# -- local files -----------------------------------------------------------------------------
def _text_source(path: Path, column: str | None, where: str) -> PromptSource:
    def rows() -> Iterator[str]:
        return (line for line in text_lines(path) if not is_blank(line))

    check_utf8(path)  # the whole file, before any prompt is scored
    if next(iter(rows()), None) is None:
        raise ValueError(empty_message(where))
    return PromptSource(where, rows)


def _jsonl_source(path: Path, column: str | None, where: str) -> PromptSource:
    def records() -> Iterator[Any]:
        for number, line in enumerate(text_lines(path), start=1):
            if not is_blank(line):
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f"Line {number} of {where} is not JSON: {error}") from None

    check_utf8(path)  # the whole file, before any prompt is scored
    first = next(iter(records()), None)
    if first is None:
        raise ValueError(empty_message(where))
    if isinstance(first, str) and column is None:
        return PromptSource(where, records)
    if not isinstance(first, dict):
        raise ValueError(f"{where} holds a JSON {type(first).__name__} in its first line, not a "
                         "string or an object.")  # fmt: skip
    names = [str(k) for k in first]
    if column is None:
        strings = [n for n in names if not n.startswith("Unnamed:") and isinstance(first[n], str)]
        column = pick_column(names, strings, where)
    if column not in first:
        raise ValueError(f"No column {column!r} in {where}; the columns are {names}.")

    def values() -> Iterator[Any]:
        for record in records():
            if not isinstance(record, dict):
                raise ValueError(
                    f"{where} mixes objects and other values; expected one kind of row."
                )
            yield record.get(column)

    return PromptSource(f"column {column!r} of {where}", values)


def _csv_source(path: Path, column: str | None, where: str) -> PromptSource:
    import pandas as pd

    check_utf8(path)  # the whole file, before any prompt is scored
    # keep_default_na=False: an empty cell is "" (caught as empty), and "NA" stays a prompt.
    with table_errors(path, "CSV"):
        head = pd.read_csv(path, keep_default_na=False, nrows=ROWS_PER_READ)
    names = [str(n) for n in head.columns]
    if column is None:
        candidates = [n for n in names if not n.startswith("Unnamed:")]
        strings = [n for n in candidates if all(isinstance(v, str) for v in head[n].tolist())]
        column = pick_column(names, strings, where)
    if column not in names:
        raise ValueError(f"No column {column!r} in {where}; the columns are {names}.")
    if head.empty:
        raise ValueError(empty_message(f"column {column!r} of {where}"))

    def values() -> Iterator[Any]:
        # The column read as text: exactly the strings load_prompts sees whenever it accepts
        # the file (pandas only turns a whole column into numbers when none is text).
        with table_errors(path, "CSV"):
            reader = pd.read_csv(
                path, keep_default_na=False, usecols=[column], dtype={column: str},
                chunksize=ROWS_PER_READ,
            )  # fmt: skip
            with reader:
                for frame in reader:
                    yield from frame[column].tolist()

    return PromptSource(f"column {column!r} of {where}", values)


def _parquet_source(path: Path, column: str | None, where: str) -> PromptSource:
    import pyarrow as pa
    import pyarrow.parquet as pq

    def is_text(kind: Any) -> bool:
        if pa.types.is_dictionary(kind):
            kind = kind.value_type
        return pa.types.is_string(kind) or pa.types.is_large_string(kind)

    with table_errors(path, "Parquet"):
        schema = pq.ParquetFile(path).schema_arrow
    # pandas keeps its index in "__index_level_N__" columns; read_parquet never shows them.
    names = [n for n in schema.names if not n.startswith("__index_level_")]
    if column is None:
        strings = [
            n for n in names if not n.startswith("Unnamed:") and is_text(schema.field(n).type)
        ]
        column = pick_column(names, strings, where)
    if column not in names:
        raise ValueError(f"No column {column!r} in {where}; the columns are {names}.")

    def values() -> Iterator[Any]:
        with table_errors(path, "Parquet"), pq.ParquetFile(path) as f:
            for batch in f.iter_batches(batch_size=ROWS_PER_READ, columns=[column]):
                yield from batch.column(0).to_pylist()

    with table_errors(path, "Parquet"):
        size = pq.ParquetFile(path).metadata.num_rows
    if size == 0:
        raise ValueError(empty_message(f"column {column!r} of {where}"))
    return PromptSource(f"column {column!r} of {where}", values, size=size)


_FILE_READERS: dict[str, Callable[[Path, str | None, str], PromptSource]] = {
    ".txt": _text_source,
    ".jsonl": _jsonl_source,
    ".csv": _csv_source,
    ".parquet": _parquet_source,
}


# -- datasets --------------------------------------------------------------------------------
def _from_dataset(dataset: Any, column: str | None, split: str | None, where: str) -> PromptSource:
    """A ``Dataset`` or ``IterableDataset`` (or a dict of them: ``split`` picks one)."""
    if isinstance(dataset, Mapping):
        dataset = pick_split(dataset, split)
    features = getattr(dataset, "features", None)
    if features is not None:
        names = list(features)
        text = ("string", "large_string")
        strings = [n for n in names if getattr(features[n], "dtype", None) in text]
    else:  # a streamed dataset that does not know its columns: look at the first row
        first = next(iter(dataset), None)
        if first is None:
            raise ValueError(empty_message(where))
        names = list(first)
        strings = [n for n in names if isinstance(first[n], str)]
    if column is None:
        column = pick_column(names, strings, where)
    if column not in names:
        raise ValueError(f"No column {column!r} in {where}; the columns are {names}.")
    size = len(dataset) if hasattr(dataset, "__len__") else None

    def values() -> Iterator[Any]:
        if hasattr(dataset, "iter") and size is not None:  # a Dataset: Arrow batches
            for batch in dataset.select_columns([column]).iter(batch_size=ROWS_PER_READ):
                yield from batch[column]
        else:
            for row in dataset:
                yield row[column]

    return PromptSource(f"column {column!r} of {where}", values, size=size)
