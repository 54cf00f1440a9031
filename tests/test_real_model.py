"""The default model, SmolLM2-135M-Instruct from its PyPI package, on real data from installed packages.

The model is prepared under the real FISHERSFT_HOME (`make` prepares it once per machine), not per test."""

import json
import math
import subprocess
import sys
from collections import Counter

import pytest
import torch

from fishersft.contract.compression import Compression
from fishersft.data import corpora
from fishersft.data.dataset import read_jsonl
from fishersft.data.encoding import encode_all
from fishersft.errors import InputError
from fishersft.features.embedding import embed
from fishersft.features.files import load_features
from fishersft.features.store import FeatureStoreWriter
from fishersft.models.loading import load_model
from fishersft.models.registry import DEFAULT_MODEL, builtin_model_dir, model_dim

pytestmark = pytest.mark.slow  # the real default model

ENGLISH_CATEGORIES = 21


@pytest.fixture(scope="session")
def smollm2():
    path = builtin_model_dir(DEFAULT_MODEL)
    return path, *load_model(path, torch.device("cpu"))


@pytest.fixture(scope="session")
def english(tmp_path_factory):
    path = tmp_path_factory.mktemp("chatterbot") / "english.jsonl"
    corpora.write_jsonl(corpora.chatterbot(["english"]), path)
    return path


def test_the_default_model_is_the_real_smollm2_saved_as_plain_safetensors(smollm2):
    path, model, tokenizer = smollm2
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config and (path / "model.safetensors").exists()
    assert model_dim(path) == 576 and sum(p.numel() for p in model.parameters()) == 134_515_008
    text = (
        "The history of the city goes back more than two thousand years. It was founded on the banks of a river, "
        "and for centuries it was the most important trading town of the region."
    )
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        perplexity = math.exp(model(input_ids=ids, labels=ids).loss.item())
    assert perplexity < 40  # a trained model; a random copy of it scores tens of thousands


def test_real_features_through_the_lm_head_reproduce_the_models_logits(smollm2, english, tmp_path):
    _, model, tokenizer = smollm2
    examples = read_jsonl(english)[::100]
    encoded = encode_all(examples, tokenizer, 1024)
    stores = {}
    for precision, dtype in (("float32", None), ("bfloat16", torch.bfloat16)):
        writer = FeatureStoreWriter(tmp_path / precision, 576, Compression(rank=1024), uncertainty=True)  # every row
        writer.add(list(range(len(encoded))), [len(e.targets) for e in encoded])
        embed(model, encoded, writer, batch_tokens=512, dtype=dtype)  # padded, length-sorted batches
        stores[precision] = load_features(writer.commit())
    head = model.get_output_embeddings()
    agree = total = 0
    for i, enc in enumerate(encoded):  # one example at a time, unpadded, the whole causal LM: the reference
        with torch.no_grad():
            logits = model(input_ids=torch.from_numpy(enc.input_ids).long()[None]).logits[0, enc.targets]
            from_store = {
                p: head(torch.from_numpy(fs.read_rows(fs.offsets[i], fs.offsets[i + 1])).float())
                for p, fs in stores.items()
            }
        # float32 features, stored as float16: their logits agree to float16 rounding of a 576-term dot product
        torch.testing.assert_close(from_store["float32"], logits, atol=0.1, rtol=0.02)
        assert torch.equal(from_store["float32"].argmax(-1), logits.argmax(-1))
        agree += int((from_store["bfloat16"].argmax(-1) == logits.argmax(-1)).sum())
        total += len(enc.targets)
    assert agree >= 0.95 * total  # the bfloat16-autocast embedder predicts the same next tokens


def test_selection_on_chatterbot_english_with_the_default_model(english, tmp_path):
    out = tmp_path / "result.json"
    done = subprocess.run(
        [sys.executable, "-m", "fishersft.cli", "select", english, "--budget", "30", "--out", out],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["model"] == DEFAULT_MODEL and result["dim"] == 576 and result["n_candidates"] == 898
    ids = [json.loads(line)["id"] for line in english.read_text().splitlines()]
    assert len(set(result["selected"])) == 30 and set(result["selected"]) <= set(ids)
    assert result["gains"] == sorted(result["gains"], reverse=True) and result["objective"] > 0


def test_corpora_are_read_from_the_installed_packages(tmp_path):
    english = corpora.chatterbot(["english"])
    categories = Counter(row["category"] for row in english)
    assert len(english) == 898 and len(categories) == ENGLISH_CATEGORIES
    assert len({row["id"] for row in english}) == len(english)
    assert (
        len({json.dumps(r["messages"]) for r in english if r["category"] == "tech_support"})
        == categories["tech_support"]
    )
    assert all(r["messages"][1]["role"] == "assistant" for r in english)
    assert len(corpora.chatterbot_languages()) == 28
    with pytest.raises(InputError, match="no chatterbot language 'klingon'"):
        corpora.chatterbot(["klingon"])
    tasks = corpora.humaneval()
    assert len(tasks) == 164 and tasks[0]["id"] == "HumanEval/0" and tasks[0]["prompt"].startswith("from typing")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fishersft.cli",
            "sample-data",
            "chatterbot",
            "--language",
            "english,yoruba",
            "--out",
            tmp_path / "two.jsonl",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert len(read_jsonl(tmp_path / "two.jsonl")) == 898 + 31
