"""The reference demo's score CSV: an index column and one score column, empty cells for latents
that never fired."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import torch
from torch import Tensor


def read_score_csv(path: str | Path) -> tuple[Tensor, float, str]:
    """``(scores, coverage, column name)`` of a score CSV.

    An empty (or ``nan``) cell is a latent that never fired: its score is 0 and it does not
    count towards coverage.
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({e}); is it a score CSV?") from None
    if not rows or len(rows[0]) != 2:
        header = rows[0] if rows else []
        raise ValueError(
            f"{path} should have an index column and one score column; its header is {header}."
        )
    values: dict[int, float] = {}
    fired: dict[int, bool] = {}
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != 2:
            raise ValueError(f"{path}, line {line}: expected 2 cells, got {len(row)}.")
        try:
            index = int(row[0])
        except ValueError:
            raise ValueError(f"{path}, line {line}: index {row[0]!r} is not an integer.") from None
        if index in values:
            raise ValueError(f"{path}, line {line}: latent {index} appears twice.")
        cell = row[1].strip()
        empty = cell == "" or cell.lower() == "nan"
        values[index], fired[index] = (0.0 if empty else _parse_score(cell, path, line)), not empty
    n = len(values)
    if n == 0 or sorted(values) != list(range(n)):
        raise ValueError(f"{path}: the index column should hold 0..{n - 1}, each once.")
    scores = torch.tensor([values[i] for i in range(n)], dtype=torch.float32)
    return scores, sum(fired.values()) / n, rows[0][1]


def _parse_score(cell: str, path: Path, line: int) -> float:
    try:
        value = float(cell)
    except ValueError:
        raise ValueError(f"{path}, line {line}: score {cell!r} is not a number.") from None
    if not math.isfinite(value):
        raise ValueError(f"{path}, line {line}: score {cell!r} is not finite.")
    return value
