"""load_prompts: every accepted source, column picking, and the errors."""

from __future__ import annotations

import json

import datasets
import pandas as pd
import pytest

from hf_sae_steer import load_prompts
from hf_sae_steer.data.prompts import hash_prompts

PROMPTS = ["First prompt, with a comma.", 'A "quoted" one', "NA"]


def test_list_and_tuple():
    assert load_prompts(PROMPTS) == PROMPTS
    assert load_prompts(tuple(PROMPTS)) == PROMPTS


def test_reference_demo_csv_layout(tmp_path):
    path = tmp_path / "d_ref_prompts.csv"
    pd.Series(PROMPTS).to_csv(path)  # how the demo wrote it: unnamed index + column "0"
    assert path.read_text().splitlines()[0] == ",0"
    assert load_prompts(path) == PROMPTS
    assert load_prompts(str(path), column="0") == PROMPTS


def test_csv_picks_text_column(tmp_path):
    path = tmp_path / "p.csv"
    pd.DataFrame({"id": [1, 2, 3], "label": ["a", "b", "c"], "text": PROMPTS}).to_csv(path)
    assert load_prompts(path) == PROMPTS  # two string columns: "text" wins by name
    assert load_prompts(path, column="label") == ["a", "b", "c"]


def test_txt_one_prompt_per_line(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("one\n\ntwo words\n  \nthree\n")
    assert load_prompts(path) == ["one", "two words", "three"]


def test_json_jsonl_parquet(tmp_path):
    (tmp_path / "list.json").write_text(json.dumps(PROMPTS))
    (tmp_path / "cols.json").write_text(json.dumps({"prompt": PROMPTS, "n": [1, 2, 3]}))
    (tmp_path / "rows.jsonl").write_text(
        "\n".join(json.dumps({"text": p, "score": i}) for i, p in enumerate(PROMPTS))
    )
    pd.DataFrame({"prompt": PROMPTS, "n": [1, 2, 3]}).to_parquet(tmp_path / "p.parquet")
    for name in ("list.json", "cols.json", "rows.jsonl", "p.parquet"):
        assert load_prompts(tmp_path / name) == PROMPTS, name


def test_datasets_objects():
    ds = datasets.Dataset.from_dict({"question": PROMPTS, "idx": [0, 1, 2]})
    assert load_prompts(ds) == PROMPTS  # the single string column
    both = datasets.DatasetDict({"train": ds, "test": ds.select([0])})
    assert load_prompts(both) == PROMPTS
    assert load_prompts(both, split="test") == PROMPTS[:1]


def test_local_dataset_folder_through_load_dataset(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    repo = tmp_path / "repo"
    repo.mkdir()
    pd.DataFrame({"text": PROMPTS}).to_csv(repo / "train.csv", index=False)
    assert load_prompts(str(repo), split="train[:2]") == PROMPTS[:2]


def test_hub_id_forwards_config_and_split(monkeypatch):
    calls = []

    def fake_load_dataset(path, name=None, split=None, **kw):
        calls.append((path, name, split))
        return datasets.Dataset.from_dict({"text": PROMPTS[:2], "other": ["x", "y"]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    got = load_prompts("owner/medical", column="text", split="train[:2]", config="en")
    assert got == PROMPTS[:2] and calls == [("owner/medical", "en", "train[:2]")]


def test_missing_column_names_the_columns(tmp_path):
    path = tmp_path / "p.csv"
    pd.DataFrame({"a": PROMPTS, "b": PROMPTS}).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"Cannot tell which column.*'a', 'b'"):
        load_prompts(path)
    with pytest.raises(ValueError, match=r"No column 'text'.*\['a', 'b'\]"):
        load_prompts(path, column="text")
    ds = datasets.Dataset.from_dict({"a": PROMPTS})
    with pytest.raises(ValueError, match=r"No column 'text'.*\['a'\]"):
        load_prompts(ds, column="text")


def test_empty_sets(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        load_prompts([])
    (tmp_path / "e.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="empty"):
        load_prompts(tmp_path / "e.txt")
    (tmp_path / "e.csv").write_text(",0\n")
    with pytest.raises(ValueError, match="empty"):
        load_prompts(tmp_path / "e.csv")


def test_non_string_rows(tmp_path):
    with pytest.raises(ValueError, match=r"Row 1 of the list is int"):
        load_prompts(["ok", 3])
    path = tmp_path / "p.csv"
    path.write_text(",0\n0,fine\n1,\n")  # an empty cell
    with pytest.raises(ValueError, match=r"Row 1 .*empty"):
        load_prompts(path)
    (tmp_path / "n.csv").write_text("text\n1\n2\n")  # CSV cells are text, as streamed
    assert load_prompts(tmp_path / "n.csv") == ["1", "2"]
    ds = datasets.Dataset.from_dict({"text": ["a", None]})
    with pytest.raises(ValueError, match=r"Row 1 .*NoneType"):
        load_prompts(ds)


def test_bad_sources(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_prompts(tmp_path / "missing.csv")
    with pytest.raises(TypeError):
        load_prompts(42)
    (tmp_path / "x.yaml").write_text("a: b")
    with pytest.raises(ValueError, match="Unsupported"):
        load_prompts(tmp_path / "x.yaml")


def test_hash_prompts_is_content_based():
    assert hash_prompts(PROMPTS) == hash_prompts(list(PROMPTS))
    assert hash_prompts(PROMPTS) != hash_prompts(PROMPTS[::-1])


def test_split_slices_a_local_file(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("\n".join(f"prompt {i}" for i in range(30)))
    assert load_prompts(path, split="train[:20]") == [f"prompt {i}" for i in range(20)]
    assert load_prompts(path, split="[25:]") == [f"prompt {i}" for i in range(25, 30)]
    with pytest.raises(ValueError, match="percentages are for Hub datasets"):
        load_prompts(path, split="train[:10%]")
    with pytest.raises(ValueError, match="leaves no prompts"):
        load_prompts(path, split="[40:]")
