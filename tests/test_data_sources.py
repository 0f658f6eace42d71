"""Prompt sources: every streamed format yields exactly what load_prompts returns, lazily."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest

from hf_sae_steer.data.prompts import PromptHash, hash_prompts, load_prompts
from hf_sae_steer.data.sources import PromptSource, open_prompts

PROMPTS = [
    "The patient was treated for a fever.",
    'A "quoted" prompt, with a comma',
    "Ünïcödé prompt: naïve café ☕",
    "NA",  # stays a prompt in csv (keep_default_na=False)
    "  leading spaces are kept",
    "42",  # a number-like prompt among text ones stays text
    "The orchestra played a symphony.",
]


@pytest.fixture
def files(tmp_path):
    frame = pd.DataFrame({"id": range(len(PROMPTS)), "text": PROMPTS})
    paths = {
        "txt": tmp_path / "p.txt",
        "jsonl": tmp_path / "p.jsonl",
        "jsonl_strings": tmp_path / "s.jsonl",
        "csv": tmp_path / "p.csv",
        "csv_series": tmp_path / "series.csv",
        "parquet": tmp_path / "p.parquet",
        "json": tmp_path / "p.json",
    }
    # Blank lines and Windows line ends are skipped / read as by read_text().splitlines().
    paths["txt"].write_text("\r\n".join(PROMPTS[:3] + ["", "   "] + PROMPTS[3:]) + "\n")
    rows = [json.dumps({"id": i, "text": p}, ensure_ascii=False) for i, p in enumerate(PROMPTS)]
    paths["jsonl"].write_text("\n".join(rows[:2] + [""] + rows[2:]) + "\n", encoding="utf-8")
    paths["jsonl_strings"].write_text("\n".join(json.dumps(p) for p in PROMPTS))
    frame.to_csv(paths["csv"], index=False)
    pd.Series(PROMPTS).to_csv(paths["csv_series"])  # the reference demo's layout: "", "0"
    frame.to_parquet(paths["parquet"])
    paths["json"].write_text(json.dumps({"text": PROMPTS}))
    return paths


@pytest.mark.parametrize(
    "kind", ["txt", "jsonl", "jsonl_strings", "csv", "csv_series", "parquet", "json"]
)
@pytest.mark.parametrize("split", [None, "train[2:5]", "[:-2]", "[3:]"])
def test_each_file_format_equals_load_prompts(files, kind, split):
    expected = load_prompts(files[kind], split=split)
    source = open_prompts(str(files[kind]), split=split)
    assert list(source) == expected
    assert list(source) == expected  # a source can be read again
    assert source.known_size in (None, len(expected))


def test_small_read_blocks_give_the_same_prompts(files, monkeypatch):
    import hf_sae_steer.data.sources as sources

    monkeypatch.setattr(sources, "ROWS_PER_READ", 2)  # csv/parquet read in many blocks
    for kind in ("csv", "parquet"):
        assert list(open_prompts(files[kind], column="text")) == PROMPTS


def test_datasets_streamed_and_in_memory_equal_the_list(files):
    datasets = pytest.importorskip("datasets")
    data_files = str(files["jsonl"])
    streamed = datasets.load_dataset("json", data_files=data_files, split="train", streaming=True)
    source = open_prompts(streamed)
    assert list(source) == PROMPTS and source.where == "column 'text' of the dataset"
    assert list(open_prompts(streamed, split=None)) == PROMPTS
    in_memory = datasets.load_dataset("json", data_files=data_files, split="train")
    assert list(open_prompts(in_memory)) == load_prompts(in_memory) == PROMPTS
    assert open_prompts(in_memory).known_size == len(PROMPTS)
    as_dict = datasets.load_dataset("json", data_files=data_files, streaming=True)
    assert list(open_prompts(as_dict)) == PROMPTS  # one split: picked


def test_streamed_local_dataset_by_name_with_a_slice(files, tmp_path):
    pytest.importorskip("datasets")
    folder = tmp_path / "dataset"
    folder.mkdir()
    (folder / "train.jsonl").write_text(files["jsonl"].read_text(encoding="utf-8"))
    source = open_prompts(str(folder), split="train[1:4]", streaming=True)
    assert list(source) == PROMPTS[1:4]
    whole = open_prompts(str(folder))  # not streamed: Arrow, still read in batches
    assert list(whole) == PROMPTS
    with pytest.raises(ValueError, match="negative slice"):
        open_prompts(str(folder), split="train[-2:]", streaming=True)


def test_lists_iterables_and_sources():
    assert list(open_prompts(PROMPTS)) == PROMPTS and open_prompts(PROMPTS).size == len(PROMPTS)
    once = open_prompts(p for p in PROMPTS)  # a generator is read once, lazily
    assert once.size is None and list(once) == PROMPTS
    source = PromptSource("mine", lambda: iter(PROMPTS))
    assert open_prompts(source) is source


def test_reading_is_lazy(tmp_path):
    path = tmp_path / "big.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"prompt {i}"}) for i in range(50)) + "\n{bad")
    stream = iter(open_prompts(path))
    assert [next(stream) for _ in range(3)] == ["prompt 0", "prompt 1", "prompt 2"]
    with pytest.raises(ValueError, match="Line 51 of .* is not JSON"):
        list(stream)  # the broken last line is only met when reached


@pytest.mark.parametrize(
    "content, suffix, message",
    [
        ("", ".txt", "No prompts in"),
        ("\n  \n", ".txt", "No prompts in"),
        ("", ".jsonl", "No prompts in"),
        ('{"a": 1, "b": 2}\n', ".jsonl", "Cannot tell which column"),
        ('{"text": "x"}\n{"text": ""}\n', ".jsonl", "Row 1 of column 'text' .* empty prompt"),
        ('{"text": "x"}\n{"other": "y"}\n', ".jsonl", "Row 1 of .* NoneType"),
        ('{"text": "x"}\n"y"\n', ".jsonl", "mixes objects"),
        ("[1, 2]\n", ".jsonl", "JSON list"),
        ("a,b\n1,2\n", ".csv", "Cannot tell which column"),
        ("text\n", ".csv", "No prompts in column 'text'"),
    ],
)
def test_bad_files_are_one_clear_error(tmp_path, content, suffix, message):
    path = tmp_path / f"bad{suffix}"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        list(open_prompts(path))


def test_missing_file_and_column_fail_when_opened(tmp_path, files):
    with pytest.raises(FileNotFoundError, match="No such prompt file"):
        open_prompts(tmp_path / "nope.jsonl")
    with pytest.raises(FileNotFoundError, match="No such prompt file"):
        open_prompts(str(tmp_path / "nope.csv"))
    for kind in ("jsonl", "csv", "parquet"):
        with pytest.raises(ValueError, match="No column 'prompt'"):
            open_prompts(files[kind], column="prompt")  # before any prompt is read
    with pytest.raises(TypeError, match="Cannot read prompts from a int"):
        open_prompts(3)


def test_prompt_hash_of_a_stream_equals_hash_prompts():
    for prompts in ([], ["one"], PROMPTS, ['a "b"', "é\n\t", "[", ", "]):
        hasher = PromptHash()
        prefixes = set()
        for prompt in prompts:
            hasher.update(prompt)
            prefixes.add(hasher.prefix())
        assert hasher.hexdigest() == hash_prompts(prompts) and hasher.count == len(prompts)
        assert len(prefixes) == len(prompts)  # every prefix is told apart


# -- awkward files (issue 16): the stream and load_prompts agree, errors name file and line ---
def both(path, **kw):
    """What load_prompts and a streamed source give for ``path`` (or the error each raises)."""
    out = []
    for read in (lambda: load_prompts(path, **kw), lambda: list(open_prompts(path, **kw))):
        try:
            out.append(read())
        except (ValueError, OSError) as error:
            out.append(f"{type(error).__name__}: {error}")
    return out


@pytest.mark.parametrize(
    "name, data, want",
    [
        ("bom.txt", "\ufeffFirst\nSecond\n".encode(), ["First", "Second"]),
        ("bom.jsonl", '\ufeff{"text": "a"}\n{"text": "b"}\n'.encode(), ["a", "b"]),
        ("bom.json", '\ufeff["a", "b"]'.encode(), ["a", "b"]),
        # Only \n, \r\n and \r end a line: U+2028, form feed, \x1c... are characters of a prompt.
        ("seps.txt", "one\u2028still\x0cone\x1cone\x85too\rtwo\r\nthree\n".encode(),
         ["one\u2028still\x0cone\x1cone\x85too", "two", "three"]),
        ("seps.jsonl", '{"text": "a\u2028b"}\n{"text": "c\x85d"}\n'.encode(),
         ["a\u2028b", "c\x85d"]),
    ],
)  # fmt: skip
def test_boms_and_line_separators(tmp_path, name, data, want):
    path = tmp_path / name
    path.write_bytes(data)
    assert both(path) == [want, want]


def test_a_numeric_csv_column_reads_as_text_in_both(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("text,n\nhello,1\nworld,2.50\n")
    assert both(path, column="n") == [["1", "2.50"], ["1", "2.50"]]
    assert both(path) == [["hello", "world"], ["hello", "world"]]


@pytest.mark.parametrize(
    "name, data, message",
    [
        ("empty.csv", b"", "empty.csv"),
        ("bad.csv", b'text\n"unterminated\n', "bad.csv"),
        ("bad.parquet", b"PAR1 not really parquet", "bad.parquet"),
        ("empty.parquet", b"", "empty.parquet"),
    ],
)
def test_unreadable_tables_name_the_file(tmp_path, name, data, message):
    path = tmp_path / name
    path.write_bytes(data)
    for got in both(path):
        assert isinstance(got, str) and got.startswith("ValueError") and message in got, got


def test_a_folder_with_a_file_suffix_is_called_a_folder(tmp_path):
    folder = tmp_path / "x.txt"
    folder.mkdir()
    for got in both(folder):
        assert got == f"ValueError: {folder} is a folder, not a prompt file."


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".csv"])
def test_a_non_utf8_byte_is_named_with_its_line_before_reading(tmp_path, suffix):
    lines = {".txt": ["fine", "caf\xe9", "also fine"],
             ".jsonl": ['{"text": "fine"}', '{"text": "caf\xe9"}', '{"text": "ok"}'],
             ".csv": ["text", "caf\xe9", "ok"]}[suffix]  # fmt: skip
    path = tmp_path / f"p{suffix}"
    path.write_bytes("\r\n".join(lines).encode("latin-1"))
    with pytest.raises(ValueError, match=rf"{path} is not UTF-8 text: line 2 \(byte \d+\)"):
        open_prompts(path)  # when opened: before any prompt is scored
    with pytest.raises(ValueError, match=rf"{path} is not UTF-8 text: line 2"):
        load_prompts(path)


# -- issue 23: local paths datasets must never be handed ---------------------------------------
@pytest.fixture
def no_datasets_call(monkeypatch):
    """Fails the test if ``datasets`` is asked to load anything (it would scan a whole tree)."""
    datasets = pytest.importorskip("datasets")
    calls = []

    def refused(*args, **kwargs):
        calls.append(args)
        raise AssertionError(f"datasets was handed {args}")

    monkeypatch.setattr(datasets, "load_dataset", refused)
    monkeypatch.setattr(datasets, "load_from_disk", refused)
    return calls


def test_a_folder_that_is_no_dataset_is_refused_up_front(tmp_path, no_datasets_call):
    folder = tmp_path / "downloads"  # what /tmp looks like: anything at all
    (folder / "project" / "src").mkdir(parents=True)
    (folder / "project" / "src" / "main.py").write_text("print('hi')\n")
    (folder / "notes.txt").write_text("a note\n")
    (folder / "photo.png").write_bytes(b"\x89PNG")
    empty = tmp_path / "empty"
    empty.mkdir()
    for source in (folder, empty):
        for got in [*both(str(source)), *both(source)]:
            assert got.startswith(f"ValueError: {source} is a folder but not a dataset"), got
            assert "\n" not in got
        with pytest.raises(ValueError, match="is a folder but not a dataset"):
            open_prompts(str(source), streaming=True)
    assert no_datasets_call == []


def test_a_pipe_is_not_a_regular_file(tmp_path, no_datasets_call):
    for name in ("pipe.txt", "pipe"):
        fifo = tmp_path / name
        os.mkfifo(fifo)  # opening it would block until a writer came: it must not be opened
        for got in [*both(str(fifo)), *both(fifo)]:
            assert got.startswith(f"ValueError: {fifo} is not a regular file (a FIFO"), got
    assert no_datasets_call == []


def test_dataset_folders_still_load(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    saved = tmp_path / "saved"
    datasets.Dataset.from_dict({"text": PROMPTS}).save_to_disk(str(saved))
    saved_dict = tmp_path / "saved_dict"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": PROMPTS})}).save_to_disk(
        str(saved_dict)
    )
    clone = tmp_path / "clone"  # a Hub dataset repo, cloned: a card and data files
    (clone / "data").mkdir(parents=True)
    (clone / "README.md").write_text("# prompts\n")
    (clone / ".git").mkdir()
    (clone / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (clone / "data" / "train.jsonl").write_text(
        "".join(json.dumps({"text": p}) + "\n" for p in PROMPTS)
    )
    for folder in (saved, saved_dict, clone):
        for source in (str(folder), folder):
            assert load_prompts(source) == PROMPTS, folder
            assert list(open_prompts(source)) == PROMPTS, folder
