"""Datasets as .jsonl.gz and .parquet (written by pyarrow), converted into the JSONL the embedder reads: the same
examples, the same errors naming the line or row, and the same picks as the JSONL of the same rows."""

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fishersft.data.dataset import iter_examples, read_jsonl
from fishersft.data.formats import as_jsonl, dataset_format, to_jsonl
from fishersft.errors import DatasetError, InputError
from tests.conftest import SAMPLE, write_jsonl

DEEP = "[" * 50_000 + "]" * 50_000
"""JSON nested 50,000 levels deep: json.loads raises RecursionError on it."""


def sample_rows() -> list[dict]:
    return [json.loads(line) for line in SAMPLE.read_text().splitlines()]


def chat_rows() -> list[dict]:
    """The sample as chat messages, with its ids and categories."""
    return [
        {
            "id": r["id"],
            "messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}],
            "category": r["category"],
        }
        for r in sample_rows()
    ]


def write_parquet(path: Path, rows: list[dict], row_group_size: int = 50) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)
    return path


def write_gz(path: Path, lines: list[str]) -> Path:
    with gzip.open(path, "wt") as f:
        f.write("".join(line + "\n" for line in lines))
    return path


def converted(source: Path, tmp_path: Path) -> list:
    fmt = dataset_format(source)
    assert fmt in ("parquet", "jsonl.gz")
    out = tmp_path / "out.jsonl"
    examples = list(to_jsonl(source, fmt, out))
    assert read_jsonl(out) == examples  # what is stored reads back as what was validated
    return examples


@pytest.mark.parametrize("rows", [chat_rows(), sample_rows(), [{"text": r["response"]} for r in sample_rows()]])
def test_parquet_with_several_row_groups_reads_as_its_rows_in_jsonl(rows, tmp_path):
    path = write_parquet(tmp_path / "d.parquet", rows)
    assert pq.ParquetFile(path).metadata.num_row_groups == 4
    jsonl = read_jsonl(write_jsonl(tmp_path / "d.jsonl", rows))
    assert converted(path, tmp_path) == jsonl
    assert [e.id for e in jsonl][:2] == ([0, 1] if "text" in rows[0] else ["code-000", "geography-001"])


def test_parquet_nulls_are_absent_fields_and_other_columns_are_ignored(tmp_path):
    rows = [
        {"text": "one", "source": "a", "score": 1.5, "when": None},
        {"text": "two", "source": None, "score": None, "when": b"\x00"},
    ]
    examples = converted(write_parquet(tmp_path / "d.parquet", rows), tmp_path)
    assert [(e.id, e.text, e.labels) for e in examples] == [(0, "one", {"source": "a"}), (1, "two", {})]


def test_bad_parquet_rows_are_named_by_row(tmp_path):
    rows = [*chat_rows()[:60], {"id": "x", "messages": [{"role": "user", "content": "no answer"}], "category": "c"}]
    rows.append({**chat_rows()[0]})  # a duplicate id
    path = write_parquet(tmp_path / "d.parquet", rows)
    with pytest.raises(DatasetError) as error:
        converted(path, tmp_path)
    assert error.value.message == "invalid dataset: 2 bad row(s)"
    assert [str(e) for e in error.value.errors] == [
        'row 61: no non-empty "assistant" message: there is nothing to train on',
        "row 62: duplicate id 'code-000' (first used on row 1)",
    ]


def test_a_parquet_id_of_a_type_without_json_is_refused_by_its_type(tmp_path):
    path = write_parquet(tmp_path / "d.parquet", [{"id": b"\x01", "text": "one"}])
    with pytest.raises(DatasetError) as error:
        converted(path, tmp_path)
    assert str(error.value.errors[0]) == 'row 1: "id" must be a string or an integer, got bytes'


def test_jsonl_gz_reads_as_its_decompressed_lines(tmp_path):
    lines = [json.dumps(r) for r in sample_rows()]
    lines.insert(3, "")  # blank lines are skipped and still counted: line numbers are the decompressed file's
    examples = converted(write_gz(tmp_path / "d.jsonl.gz", lines), tmp_path)
    assert examples == list(iter_examples(lines))
    assert examples[3].line == 5


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_json_nested_too_deeply_is_a_bad_line_even_under_an_ignored_key(suffix, tmp_path):
    lines = ['{"text": "fine"}', '{"text": "deep", "ignored": ' + DEEP + "}", '{"text": "fine too"}']
    if suffix == ".jsonl":
        examples = iter_examples(lines)
    else:
        examples = to_jsonl(write_gz(tmp_path / f"d{suffix}", lines), "jsonl.gz", tmp_path / "out.jsonl")
    with pytest.raises(DatasetError) as error:
        list(examples)
    assert [str(e) for e in error.value.errors] == [
        "line 2: JSON nested too deeply to read (arrays or objects within each other)"
    ]


def test_parquet_strings_holding_deep_json_are_labels_not_parsed(tmp_path):
    examples = converted(write_parquet(tmp_path / "d.parquet", [{"text": "one", "note": DEEP}]), tmp_path)
    assert examples[0].labels == {"note": DEEP}


def test_unreadable_files_are_input_errors(tmp_path):
    for name in ("d.parquet", "d.jsonl.gz"):
        path = tmp_path / name
        path.write_bytes(b"not this format at all")
        with pytest.raises(InputError) as error:
            converted(path, tmp_path)
        assert not isinstance(error.value, DatasetError) and "not a readable" in error.value.message


def test_the_command_line_reads_every_format_as_jsonl(tmp_path):
    jsonl = write_jsonl(tmp_path / "d.jsonl", chat_rows())
    assert as_jsonl(jsonl, tmp_path) == jsonl
    parquet = as_jsonl(write_parquet(tmp_path / "d.parquet", chat_rows()), tmp_path)
    assert parquet.suffix == ".jsonl" and read_jsonl(parquet) == read_jsonl(jsonl)


def upload(service, path: Path):
    with open(path, "rb") as f:
        return service.client.post("/v1/datasets", files={"file": (path.name, f)})


def assert_nothing_stored(service) -> None:
    assert service.client.get("/v1/datasets").json()["data"] == []
    assert not list((service.settings.data_dir / "blobs").iterdir())
    assert not list((service.settings.data_dir / "tmp").iterdir())


def test_parquet_and_jsonl_gz_uploads_select_what_the_jsonl_of_the_same_rows_does(service, tmp_path):
    service.start_worker()
    rows = chat_rows()
    paths = [
        write_jsonl(tmp_path / "chat.jsonl", rows),
        write_parquet(tmp_path / "chat.parquet", rows),
        write_gz(tmp_path / "chat.jsonl.gz", [json.dumps(r) for r in rows]),
    ]
    datasets = [service.upload(p) for p in paths]
    assert [d["format"] for d in datasets] == ["jsonl", "parquet", "jsonl.gz"]
    assert len({d["id"] for d in datasets}) == 3
    for dataset, path in zip(datasets, paths, strict=True):
        assert dataset["n_examples"] == 200 and dataset["labels"] == {"category": 5}
        assert dataset["bytes"] == path.stat().st_size  # the record describes the upload, not the stored JSONL
    jobs = [service.select(dataset_id=d["id"], budget={"examples": 10}, max_length=64) for d in datasets]
    results = [service.wait(job["id"]) for job in jobs]
    assert all(r["status"] == "succeeded" for r in results), results
    selected = [r["result"]["selected"] for r in results]
    assert selected[0] == selected[1] == selected[2] and len(selected[0]) == 10
    assert all(isinstance(i, str) for i in selected[0])


def test_an_invalid_parquet_row_is_a_422_naming_the_row_and_nothing_is_stored(service, tmp_path):
    rows = chat_rows()
    rows[120] = {**rows[120], "messages": []}
    response = upload(service, write_parquet(tmp_path / "bad.parquet", rows))
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_dataset" and error["message"] == "invalid dataset: 1 bad row(s)"
    assert error["details"] == [
        {"row": 121, "message": '"messages" must be a non-empty list of {"role", "content"} objects'}
    ]
    assert_nothing_stored(service)


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_an_uploaded_line_nested_too_deeply_is_a_422_naming_it(service, tmp_path, suffix):
    lines = ['{"text": "fine"}', '{"text": "deep", "ignored": ' + DEEP + "}"]
    path = (
        write_gz(tmp_path / f"deep{suffix}", lines)
        if suffix == ".jsonl.gz"
        else write_jsonl(tmp_path / "deep.jsonl", lines)
    )
    response = upload(service, path)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["details"] == [
        {"line": 2, "message": "JSON nested too deeply to read (arrays or objects within each other)"}
    ]
    assert_nothing_stored(service)


def test_unreadable_parquet_and_gzip_uploads_are_422s(service, tmp_path):
    for name in ("broken.parquet", "broken.jsonl.gz"):
        path = tmp_path / name
        path.write_bytes(b"PAR1 but nothing more")
        response = upload(service, path)
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["code"] == "invalid_dataset" and error["message"].startswith("not a readable"), error
    assert_nothing_stored(service)


def test_a_jsonl_gz_that_inflates_past_the_upload_limit_is_a_413(service, tmp_path):
    line = json.dumps({"text": "x" * 10_000})
    path = write_gz(tmp_path / "big.jsonl.gz", [line] * (service.settings.max_upload_bytes // len(line) + 1))
    assert path.stat().st_size < service.settings.max_upload_bytes // 100
    response = upload(service, path)
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "too_large"
    assert_nothing_stored(service)
