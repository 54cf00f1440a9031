"""`fishersft select` end to end, through the console script."""

import json
import subprocess
import sys

import numpy as np
import pytest

from fishersft.features.files import load_features
from tests.conftest import SAMPLE, write_jsonl

pytestmark = pytest.mark.slow  # each test runs the command line in subprocesses


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fishersft.cli", *map(str, args)], capture_output=True, text=True)


def test_select_on_a_jsonl_dataset_with_a_tiny_model(tmp_path, llama_dir):
    out = tmp_path / "out.json"
    store = tmp_path / "store"
    done = run(
        "select",
        SAMPLE,
        "--model",
        llama_dir,
        "--budget",
        12,
        "--max-length",
        20,
        "--features-out",
        store,
        "--out",
        out,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert len(result["selected"]) == len(set(result["selected"])) == 12
    assert result["n_candidates"] == 200 and result["method"] == "fisher" and result["budget"] == {"examples": 12}
    assert result["truncated"] > 0 and result["n_loss_tokens"] == load_features(store).n_tokens
    assert result["gains"] == sorted(result["gains"], reverse=True)
    assert set(result["timings"]) == {"embed_s", "select_s"}
    # selecting again from the saved features store gives the same answer, without a model
    again = run("select", store, "--budget", 12)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["selected"] == result["selected"]
    # the store keeps each example's loss, not IFD (a pass of its own): method ifd names what to run instead
    assert run("select", store, "--budget", 12, "--method", "loss").returncode == 0
    ifd = run("select", store, "--budget", 12, "--method", "ifd")
    assert ifd.returncode == 2 and "without the ifd pass" in ifd.stderr


def test_select_on_a_features_file_with_token_budget_random_and_warm_start(tmp_path):
    rng = np.random.default_rng(0)
    offsets = np.concatenate([[0], np.cumsum(rng.integers(1, 9, 60))])
    features = rng.standard_normal((offsets[-1], 16)).astype(np.float32)
    path = tmp_path / "f.npz"
    np.savez(path, features=features, offsets=offsets, ids=np.array([f"ex{i}" for i in range(60)]))
    fisher = json.loads(run("select", path, "--budget-tokens", 50, "--lambda", "0.5").stdout)
    assert sum(int(np.diff(offsets)[int(i[2:])]) for i in fisher["selected"]) <= 50
    assert fisher["n_selected_loss_tokens"] <= 50 and fisher["budget"] == {"tokens": 50}
    random = json.loads(run("select", path, "--budget-tokens", 50, "--method", "random", "--seed", 1).stdout)
    assert random["objective"] < fisher["objective"]
    (tmp_path / "warm.txt").write_text("ex3\nex5\n")
    warm = json.loads(run("select", path, "--budget", 5, "--warm-start", tmp_path / "warm.txt").stdout)
    assert not {"ex3", "ex5"} & set(warm["selected"])
    # GreeDi: one partition is centralized greedy; three keep their rounds, with the warm start in each
    one = json.loads(run("select", path, "--budget-tokens", 50, "--lambda", "0.5", "--partitions", 1).stdout)
    assert one["selected"] == fisher["selected"] and one["objective"] == fisher["objective"]
    three = json.loads(
        run("select", path, "--budget", 5, "--warm-start", tmp_path / "warm.txt", "--partitions", 3).stdout
    )
    assert [r["candidates"] for r in three["partitions"]["rounds"]] == [20, 19, 19]  # 58 candidates, 3 ways
    assert len(three["selected"]) == 5 and not {"ex3", "ex5"} & set(three["selected"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["select", "{data}", "--model", "gpt-17", "--budget", "3"], "neither a built-in model"),
        (["select", "{data}", "--model", "{tmp}", "--budget", "3"], "not a transformers model directory"),
        (["select", "{bad}", "--model", "{model}", "--budget", "3"], "line 2: not valid JSON"),
        (["select", "{tmp}/missing.npz", "--budget", "3"], "no such file"),
        (["select", "{data}", "--budget", "0"], "budget.examples: Input should be greater than 0"),
        (["select", "{data}", "--budget", "3", "--budget-tokens", "9"], "give exactly one of `examples`, `tokens`"),
        (["select", "{data}", "--model", "{model}", "--budget", "3", "--features-out", "{tmp}"], "already exists"),
        (["select", "{data}", "--model", "{model}", "--budget", "3", "--method", "similarity"], "selects for a target"),
        (
            ["select", "{data}", "--model", "{model}", "--budget", "3", "--method", "kcenter", "--target", "{data}"],
            "select for a target",
        ),
        (["select", "{data}", "--budget", "3", "--method", "random", "--partitions", "2"], "takes none"),
        (
            ["select", "{data}", "--model", "{model}", "--budget", "3", "--target", "{data}", "--partitions", "2"],
            "exact greedy",
        ),
        (["select", "{data}", "--model", "{model}", "--budget", "3", "--lambda", "1e9"], "lambda: Input should be"),
    ],
)
def test_bad_input_exits_with_a_message_not_a_traceback(tmp_path, llama_dir, args, message):
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": "fine"}])
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "fine"}, "{oops"])
    argv = [a.format(data=data, bad=bad, tmp=tmp_path, model=llama_dir) for a in args]
    done = run(*argv)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr


def test_every_method_selects_from_the_command_line(tmp_path, llama_dir):
    target = write_jsonl(tmp_path / "target.jsonl", SAMPLE.read_text().splitlines()[:10])
    for method, targeted in [
        ("kcenter", False),
        ("similarity", True),
        ("fisher", True),
        ("loss", False),
        ("ifd", False),
    ]:
        extra = ["--target", target] if targeted else []
        done = run("select", SAMPLE, "--model", llama_dir, "--budget-tokens", 150, "--method", method, *extra)
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert result["method"] == method and 0 < result["n_selected_loss_tokens"] <= 150
        assert (result["target"] or {}).get("dataset_id") == (str(target) if targeted else None)
        assert len(result["selected"]) == len(set(result["selected"])) == len(result["gains"])
