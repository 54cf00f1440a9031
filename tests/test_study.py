"""benchmarks/study.py on a dataset of one's own: the tool the study's conclusions are checked with elsewhere."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fishersft.contract.comparison import ComparisonRun
from fishersft.pipeline import count_lines
from tests.conftest import SAMPLE, write_jsonl

pytestmark = pytest.mark.slow  # the study: LoRA training runs

STUDY = Path(__file__).parents[1] / "benchmarks" / "study.py"


def study(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, STUDY, *map(str, args)], capture_output=True, text=True)


def test_the_study_runs_on_a_jsonl_dataset_and_a_target_of_ones_own(tmp_path, llama_dir):
    rows = [json.loads(line) for line in SAMPLE.read_text().splitlines()]
    pool = write_jsonl(tmp_path / "pool.jsonl", [r for r in rows if r["category"] != "code"])
    target = write_jsonl(tmp_path / "code.jsonl", [r for r in rows if r["category"] == "code"])
    common = ["--fractions", "0.05", "--seeds", 2, "--epochs", 1, "--model", llama_dir, "--device", "cpu"]
    out = tmp_path / "out"
    done = study("--data", pool, "--target", target, "--methods", "fisher,random,similarity", *common, "--out", out)
    assert done.returncode == 0, done.stderr
    cell = json.loads((out / "pool-0.05.json").read_text())
    assert cell["dataset"] == "pool.jsonl, target code.jsonl" and cell["fraction"] == 0.05
    labels = sorted(ComparisonRun.model_validate(r).label for r in cell["runs"])
    assert labels == [
        "fisher/uncertainty",
        "random-balanced/0",
        "random-balanced/1",
        "random/0",
        "random/1",
        "similarity",
    ]
    assert cell["held_out"]["source"] == "target" and 0 < cell["held_out"]["n_examples"] < count_lines(target)
    table = (out / "study.md").read_text()
    assert "pool.jsonl, target code.jsonl" in table and "fisher/uncertainty" in table
    assert (out / "study.png").stat().st_size > 0 and len(json.loads((out / "study.json").read_text())) == 6

    refused = study("--target", target, *common, "--out", out)
    assert refused.returncode == 2 and "--target goes with --data" in refused.stderr
