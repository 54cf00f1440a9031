"""The embedder writes exactly the final-norm hidden states that feed the LM head at the loss positions."""

import pytest
import torch

from fishersft.contract.compression import Compression
from fishersft.data.dataset import read_jsonl
from fishersft.data.encoding import encode_all
from fishersft.errors import InputError
from fishersft.models.loading import load_model, resolve_device
from fishersft.pipeline import embed_dataset
from tests.conftest import SAMPLE, write_jsonl


@pytest.mark.parametrize("arch", ["llama_dir", "gpt2_dir"])
def test_features_are_the_pre_logit_vectors_of_the_loss_positions(arch, request, tmp_path):
    model_dir = request.getfixturevalue(arch)
    data = write_jsonl(tmp_path / "d.jsonl", [line for line in SAMPLE.read_text().splitlines()[:23]])
    options = {"max_length": 24, "batch_size": 4, "precision": "float32"}
    embedding = embed_dataset(data, model_dir, tmp_path / "store", compression=Compression(rank=24), **options)
    compressed = embed_dataset(data, model_dir, tmp_path / "rank4", compression=Compression(rank=4), **options)
    model, tokenizer = load_model(model_dir, torch.device("cpu"))
    encoded = encode_all(read_jsonl(data), tokenizer, 24)
    fs = embedding.features
    assert fs.ids == [e.id for e in read_jsonl(data)]
    assert embedding.truncated == sum(e.truncated for e in encoded) > 0
    assert fs.lengths.tolist() == compressed.features.lengths.tolist() == [len(e.targets) for e in encoded]
    for i, enc in enumerate(encoded):  # one example at a time, no padding: the reference forward pass
        with torch.no_grad():
            out = model(input_ids=torch.from_numpy(enc.input_ids).long()[None], output_hidden_states=True)
        hidden = out.hidden_states[-1][0, enc.targets]
        rows = torch.from_numpy(fs.read_rows(fs.offsets[i], fs.offsets[i + 1])).float()
        assert rows.shape == hidden.shape  # a rank above every example's loss tokens keeps every row
        torch.testing.assert_close(rows, hidden.to(torch.float16).float(), atol=2e-3, rtol=2e-3)
        torch.testing.assert_close(torch.tensor(fs.means[i], dtype=torch.float32), hidden.mean(0), atol=2e-3, rtol=2e-3)
        # rank 4: the best rank-4 approximation of X^T X, from at most 4 rows
        factor = torch.from_numpy(compressed.features.read_rows(*compressed.features.offsets[i : i + 2])).double()
        assert len(factor) == min(4, len(hidden))
        values, vectors = torch.linalg.eigh(hidden.double().T @ hidden.double())
        best = (vectors[:, -4:] * values[-4:]) @ vectors[:, -4:].T
        torch.testing.assert_close(factor.T @ factor, best, atol=0.05 * float(values[-1]), rtol=0)
        # the LM head applied to them gives the logits of the loss tokens: they are the pre-logit embeddings
        logits = model.get_output_embeddings()(hidden)
        torch.testing.assert_close(logits, out.logits[0, enc.targets], atol=1e-4, rtol=1e-4)


def test_store_is_complete_or_absent(tmp_path, llama_dir):
    data = write_jsonl(tmp_path / "d.jsonl", [f'{{"text": "example {i}"}}' for i in range(10)])

    def stop_after_first_batch(phase, done, total):
        if done > 2:
            raise RuntimeError("stopped")

    with pytest.raises(RuntimeError, match="stopped"):
        embed_dataset(data, llama_dir, tmp_path / "store", batch_size=2, progress=stop_after_first_batch)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl"]
    with pytest.raises(InputError, match="not a transformers model directory"):
        embed_dataset(data, tmp_path / "no-model", tmp_path / "store")
    embed_dataset(data, llama_dir, tmp_path / "store", batch_size=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl", "store"]


def test_device_selection():
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(InputError, match="unknown device"):
        resolve_device("tpu9")
