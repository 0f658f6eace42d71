"""Reading prompt files: the line and byte of the first non-UTF-8 sequence, whatever the block
size, line ends and multi-byte characters around the block edges."""

from __future__ import annotations

import random
import re

import pytest

import hf_sae_steer.data.prompt_files as prompt_files
from hf_sae_steer.data.prompt_files import check_utf8, text_lines


def plain_position(data: bytes) -> tuple[int, int]:
    """(line, byte) of the first byte that is not UTF-8, found by decoding prefixes."""
    for end in range(len(data) + 1):
        try:
            data[:end].decode("utf-8")
        except UnicodeDecodeError as error:
            if error.reason != "unexpected end of data" or end == len(data):
                at = error.start
                return len(re.findall(rb"\r\n|\r|\n", data[:at])) + 1, at
    raise AssertionError("valid")


@pytest.mark.parametrize("block", [1, 2, 3, 5, 64])
def test_the_line_and_byte_of_a_bad_sequence(tmp_path, monkeypatch, block):
    monkeypatch.setattr(prompt_files, "SCAN_BYTES", block)
    rng = random.Random(block)
    pieces = ["a", "é", "☕", "𝄞", "\n", "\r\n", "\r", " "]
    for trial in range(30):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 40)))
        data = bytearray(text.encode())
        path = tmp_path / f"{trial}.txt"
        path.write_bytes(bytes(data))
        check_utf8(path)  # valid, whatever the block edges split
        data.insert(rng.randint(0, len(data)), rng.choice([0xFF, 0xC3, 0x80, 0xE2]))
        try:
            bytes(data).decode("utf-8")
            continue  # the byte completed a character: still valid
        except UnicodeDecodeError:
            pass
        path.write_bytes(bytes(data))
        line, at = plain_position(bytes(data))
        where = rf"{path} is not UTF-8 text: line {line} \(byte {at}\)"
        with pytest.raises(ValueError, match=where):
            check_utf8(path)


def test_lines_end_only_at_newlines_and_a_bom_is_dropped(tmp_path):
    path = tmp_path / "p.txt"
    path.write_bytes("\ufeffa\u2028b\x0bc\x0cd\x1ce\x1df\x1eg\x85h\ri\r\nj\nk".encode())
    assert list(text_lines(path)) == ["a\u2028b\x0bc\x0cd\x1ce\x1df\x1eg\x85h", "i", "j", "k"]
