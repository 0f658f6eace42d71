"""Reading prompt files the same way everywhere: text lines, UTF-8 errors and table errors
that name the file (and the line), for :mod:`~hf_sae_steer.data.prompts` (whole files) and
:mod:`~hf_sae_steer.data.sources` (streamed ones).

A line ends at ``\\n``, ``\\r\\n`` or ``\\r`` only (U+2028, form feeds, ``\\x1c``... belong to the
prompt, unlike ``str.splitlines``), and a UTF-8 byte order mark at the start of a file is not
part of its first line.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ENCODING = "utf-8-sig"  # UTF-8, dropping a leading byte order mark
SCAN_BYTES = 1 << 20  # read at a time when checking a file's encoding


def is_blank(line: str) -> bool:
    """Whether ``line`` holds no prompt (empty or whitespace only), without copying it."""
    return not line or line.isspace()


def text_lines(path: Path) -> Iterator[str]:
    """Every line of the UTF-8 file ``path``, without its line end, read one at a time."""
    # Universal newlines: \r\n and \r arrive as \n, and \n alone splits lines.
    with path.open(encoding=ENCODING, newline=None) as f:
        try:
            for line in f:
                yield line[:-1] if line.endswith("\n") else line
        except UnicodeDecodeError:
            check_utf8(path)  # names the line
            raise


def read_text(path: Path) -> list[str]:
    """Every line of a (small) UTF-8 file, as :func:`text_lines` reads them."""
    try:
        text = path.read_text(encoding=ENCODING)
    except UnicodeDecodeError:
        check_utf8(path)
        raise
    lines = text.split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines


def check_utf8(path: Path) -> None:
    """Read ``path`` once, a block at a time; one ValueError naming the line and byte of the
    first sequence that is not UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, line, last = 0, 1, b""  # bytes read, line ends in them (+1), their last byte
    with path.open("rb") as f:
        while True:
            block = f.read(SCAN_BYTES)
            held = len(decoder.getstate()[0])  # an unfinished sequence from the last block
            try:
                decoder.decode(block, final=not block)
            except UnicodeDecodeError as error:
                at = offset - held + error.start
                before = block[: max(at - offset, 0)]  # held bytes hold no line end
                line += _line_ends(last + before) - _line_ends(last)
                bad = error.object[error.start : error.start + 4].hex(" ")
                raise ValueError(
                    f"Prompt file {path} is not UTF-8 text: line {line} (byte {at}) holds {bad} "
                    f"({error.reason}); save it as UTF-8."
                ) from None
            if not block:
                return
            line += _line_ends(last + block) - _line_ends(last)
            last, offset = block[-1:], offset + len(block)


def _line_ends(data: bytes) -> int:
    """Line ends in ``data``: \\n, \\r\\n and \\r each count once."""
    return data.count(b"\n") + data.count(b"\r") - data.count(b"\r\n")


@contextmanager
def table_errors(path: Path, kind: str) -> Iterator[None]:
    """pandas' and pyarrow's errors while reading ``path`` as one ValueError naming it."""
    try:
        yield
    except UnicodeDecodeError:
        check_utf8(path)
        raise
    except (ValueError, OSError) as error:  # ParserError, EmptyDataError, ArrowInvalid, ...
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"Prompt file {path} cannot be read as {kind}: {detail}") from None
