"""`from fishersft import select`: in-process selection with the contract's option names, the same picks as the
command line, and the same refusals as the API."""

import json

import numpy as np
import pytest
from pydantic import ValidationError

from fishersft import select
from fishersft.contract.selection import SelectionResult
from fishersft.errors import InputError
from tests.conftest import SAMPLE
from tests.test_cli import run

pytestmark = pytest.mark.slow  # the command line in subprocesses, a model pass


def test_select_from_a_jsonl_in_process_picks_what_the_command_line_picks(tmp_path, llama_dir):
    result = select(SAMPLE, model=str(llama_dir), budget={"tokens": 150}, max_length=64, method="fisher")
    assert isinstance(result, SelectionResult) and result.method == "fisher"
    assert 0 < result.n_selected_loss_tokens <= 150 and len(result.gains) == len(result.selected)
    done = run("select", SAMPLE, "--model", llama_dir, "--budget-tokens", 150, "--max-length", 64)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["selected"] == result.selected


def test_select_from_a_features_file_in_process_picks_what_the_command_line_picks(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "f.npz"
    np.savez(path, features=rng.standard_normal((120, 16)).astype(np.float32), offsets=np.arange(0, 121, 3))
    for options, flags in (
        ({"budget": {"examples": 7}, "lambda": 0.5}, ["--budget", 7, "--lambda", 0.5]),
        ({"budget": {"tokens": 30}, "method": "kcenter"}, ["--budget-tokens", 30, "--method", "kcenter"]),
    ):
        result = select(path, **options)
        done = run("select", path, *flags)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["selected"] == result.selected and len(result.selected) > 0


def test_select_refuses_what_the_api_refuses(tmp_path):
    path = tmp_path / "f.npz"
    np.savez(path, features=np.ones((8, 4), np.float32), offsets=np.arange(9))
    with pytest.raises(ValidationError, match="budget"):
        select(path, budget={"examples": 0})
    with pytest.raises(ValidationError, match="takes none"):
        select(path, budget={"examples": 2}, method="random", partitions=2)
    with pytest.raises(InputError, match="selects for a target set"):
        select(path, budget={"examples": 2}, method="similarity")
    with pytest.raises(ValidationError, match="method"):
        select(path, budget={"examples": 2}, method="nope")
