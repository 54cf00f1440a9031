"""Built-in models are prepared once, atomically; settings come from the environment and fail clearly."""

import os
import subprocess
import sys

import pytest

from fishersft.errors import InputError
from fishersft.models.registry import BUILTIN_MODELS, BuiltinModel, builtin_model_dir, model_dim, resolve_model
from fishersft.service.settings import Settings


@pytest.mark.slow  # two processes prepare a model
def test_two_processes_preparing_one_model_at_once_leave_one_whole_copy(tmp_path):
    env = {**os.environ, "FISHERSFT_HOME": str(tmp_path)}
    command = [sys.executable, "-m", "fishersft.cli", "models", "--prepare", "tiny-llama"]
    runs = [subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for run in runs:
        assert run.wait(600) == 0, run.stderr.read()
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["tiny-llama"]
    path = tmp_path / "models" / "tiny-llama"
    assert model_dim(path) == BUILTIN_MODELS["tiny-llama"].dim
    listing = subprocess.run([sys.executable, "-m", "fishersft.cli", "models"], env=env, capture_output=True, text=True)
    assert "tiny-llama: d=64, prepared" in listing.stdout
    assert "smollm2-135m-instruct (default): d=576" in listing.stdout


def test_a_failed_preparation_leaves_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.setenv("FISHERSFT_HOME", str(tmp_path))

    def half_then_fail(out):
        (out / "config.json").write_text("{}")
        raise RuntimeError("conversion failed")

    monkeypatch.setitem(BUILTIN_MODELS, "broken", BuiltinModel("broken", 8, "fails half way", half_then_fail))
    with pytest.raises(RuntimeError, match="conversion failed"):
        builtin_model_dir("broken")
    assert list((tmp_path / "models").iterdir()) == []


def test_models_are_named_or_given_by_directory(tmp_path, llama_dir):
    assert resolve_model(str(llama_dir)) == llama_dir
    with pytest.raises(InputError, match="neither a built-in model"):
        resolve_model(str(tmp_path / "nope"))


def test_settings_round_trip_through_the_environment_and_bad_values_name_the_variable(tmp_path, monkeypatch):
    settings = Settings(data_dir=tmp_path, models={"mine": tmp_path}, api_keys=frozenset({"a", "b"}), alive_ttl_s=3)
    for name, value in settings.to_env().items():
        monkeypatch.setenv(name, value)
    assert Settings.from_env() == settings
    assert "FISHERSFT_TORCH_THREADS" not in settings.to_env()  # unset: torch's default, not the text "None"
    monkeypatch.setenv("FISHERSFT_TORCH_THREADS", "1")
    assert Settings.from_env().torch_threads == 1
    monkeypatch.setenv("FISHERSFT_API_KEYS", " k1, k2 ,")
    assert Settings.from_env().api_keys == {"k1", "k2"}
    monkeypatch.setenv("FISHERSFT_MAX_UPLOAD_BYTES", "-1")
    monkeypatch.setenv("FISHERSFT_DEFAULT_MODEL", "gpt-17")
    monkeypatch.setenv("FISHERSFT_MODELS", "{not json")
    with pytest.raises(InputError) as error:
        Settings.from_env()
    named = "\n".join(error.value.details)
    for variable in ("FISHERSFT_MAX_UPLOAD_BYTES", "FISHERSFT_MODELS"):
        assert variable in named, named
    bad_api = subprocess.run(
        [sys.executable, "-m", "fishersft.cli", "api"], env={**os.environ}, capture_output=True, text=True, timeout=300
    )
    assert bad_api.returncode == 2 and "invalid configuration" in bad_api.stderr and "Traceback" not in bad_api.stderr
