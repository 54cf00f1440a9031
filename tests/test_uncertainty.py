"""Weighting `uncertainty`: each loss token's x x^T scaled by u^2 = 1 - sum_k p_k^2. The store's rows give the
Gram and the greedy picks of a brute-force Fisher built from the model's own softmax, exact and compressed; a
token predicted with certainty adds nothing; uploaded features (no model) are refused."""

import json

import numpy as np
import pytest
import torch

from fishersft import pipeline
from fishersft.contract.comparison import ComparisonBudget, ComparisonOptions
from fishersft.contract.compression import Compression
from fishersft.contract.selection import Budget, SelectionOptions
from fishersft.data.dataset import read_jsonl
from fishersft.data.encoding import encode_all
from fishersft.features.files import load_features
from fishersft.features.scores import uncertainty
from fishersft.features.set import UNCERTAIN_FILE, UNCERTAINTY_FILE, FeaturesError, feature_blocks
from fishersft.features.store import FeatureStoreWriter, assemble_store, projection_matrix
from fishersft.models.loading import load_model
from fishersft.pipeline import embed_dataset, select_features
from tests.conftest import SAMPLE, write_jsonl
from tests.test_cli import run

OPTIONS = {"max_length": 24, "batch_size": 4, "precision": "float32"}
SHARPNESS = 40.0
"""The tiny random model's LM head, scaled: its softmax is near uniform over 512 tokens (every u close to 1), which
could not tell the weighting from `tokens`; sharpened, its tokens range from near certain to unsure."""


def dataset(tmp_path):
    """23 examples: mostly longer than rank 4 (their store rows a factor), examples 2, 9 and 22 short (kept exact)."""
    rows: list = SAMPLE.read_text().splitlines()[:20]
    for at in (2, 9, 22):
        rows.insert(at, {"prompt": f"Question {at}?", "response": "Yes."})
    return write_jsonl(tmp_path / "d.jsonl", rows)


def sharpened(path, device):
    model, tokenizer = load_model(path, device)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(SHARPNESS)
    return model, tokenizer


def brute_force(model_dir, data) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Each example's sum over its loss tokens of u^2 x x^T (float64), x the final hidden state the LM head reads
    and p the softmax of the whole model's logits there, one unpadded example at a time; and every token's u."""
    model, tokenizer = sharpened(model_dir, torch.device("cpu"))
    grams, factors = [], []
    for enc in encode_all(read_jsonl(data), tokenizer, OPTIONS["max_length"]):
        ids = torch.as_tensor(enc.input_ids)[None]
        with torch.no_grad():
            x = model.base_model(input_ids=ids).last_hidden_state[0, enc.targets].double()
            p = model(input_ids=ids).logits[0, enc.targets].double().softmax(-1)
        u2 = 1 - p.square().sum(-1)
        grams.append((x * u2[:, None]).T @ x)
        factors.append(u2.sqrt())
    return grams, torch.cat(factors)


def best_rank(gram: torch.Tensor, rank: int) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(gram)
    top = vectors[:, -rank:]
    return top @ torch.diag(values[-rank:]) @ top.T


def brute_greedy(grams: list[torch.Tensor], k: int, lam: float = 1.0) -> list[int]:
    """Greedy on log det(lam I + sum of the picks' Grams), every gain recomputed at every step."""
    sigma, picks = lam * torch.eye(grams[0].shape[0], dtype=torch.float64), []
    for _ in range(k):
        base = torch.linalg.slogdet(sigma)[1]
        gains = {i: float(torch.linalg.slogdet(sigma + g)[1] - base) for i, g in enumerate(grams) if i not in picks}
        picks.append(max(gains, key=lambda i: gains[i]))
        sigma = sigma + grams[picks[-1]]
    return picks


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(a - b) / torch.linalg.matrix_norm(b))


@pytest.mark.parametrize(
    "compression",
    [Compression(rank=64), Compression(rank=4), Compression(rank=4, dim=16, projection="principal")],
    ids=["exact", "compressed", "projected"],
)
def test_the_stores_rows_give_the_brute_force_fisher_and_its_greedy(compression, llama_dir, tmp_path):
    data = dataset(tmp_path)
    fs = embed_dataset(data, llama_dir, tmp_path / "store", compression=compression, load=sharpened, **OPTIONS).features
    grams, factors = brute_force(llama_dir, data)
    assert factors.min() < 0.3 and factors.max() > 0.9  # the weighting is far from `tokens` on this model
    compressed = fs.compressed
    assert compressed.any() == (compression.rank < 23) and not compressed.all()
    projection = projection_matrix(fs)
    p = torch.eye(64, dtype=torch.float64) if projection is None else projection.double()
    # the design: exact examples' Grams exactly; a compressed one's, the best rank-r factor (found before a
    # principal projection, as the store's rows are)
    expected = [p.T @ (best_rank(g, compression.rank) if c else g) @ p for g, c in zip(grams, compressed, strict=True)]
    blocks, _ = feature_blocks(fs, "uncertainty")
    tokens, _ = feature_blocks(fs, "tokens")
    for i, want in enumerate(expected):
        got = blocks.block(i).T @ blocks.block(i)
        assert relative_error(got, want) < 3e-3, i
        plain = tokens.block(i).T @ tokens.block(i)
        assert relative_error(plain, want) > 0.05, i  # what the test tells apart from the tokens weighting
    result = select_features(fs, SelectionOptions(budget=Budget(examples=6), weighting="uncertainty"))
    assert result.weighting == "uncertainty"
    assert result.selected == [fs.ids[i] for i in brute_greedy(expected, 6)]


def test_shards_and_subsets_keep_the_uncertainty_of_one_pass(llama_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline.embedding, "ENCODE_CHUNK", 8)
    data = dataset(tmp_path)
    options = {**OPTIONS, "compression": Compression(rank=4)}
    single = embed_dataset(data, llama_dir, tmp_path / "single", **options).features
    parts = [tmp_path / f"part-{a}" for a in (0, 8, 16)]
    for part, a in zip(parts, (0, 8, 16), strict=True):
        embed_dataset(data, llama_dir, part, examples=(a, min(a + 8, 23)), **options)
    assemble_store(parts, tmp_path / "assembled")
    for name in (UNCERTAINTY_FILE, UNCERTAIN_FILE):
        assert (tmp_path / "assembled" / name).read_bytes() == (tmp_path / "single" / name).read_bytes(), name
    keep = [2, 9, 20, 22]
    assert single.compressed[keep].any() and not single.compressed[keep].all()
    whole, _ = feature_blocks(single, "uncertainty")
    part_blocks, _ = feature_blocks(single.subset(keep), "uncertainty")
    for k, i in enumerate(keep):
        assert torch.equal(part_blocks.block(k), whole.block(i))


def test_a_token_predicted_with_certainty_adds_nothing(tmp_path):
    logits = torch.randn(5, 50) * 3
    logits[0] = 0.0
    logits[0, 7] = 1e4  # certain: every other probability is exactly 0
    logits[1] = 0.0  # uniform
    u = uncertainty(logits.log_softmax(-1))
    brute = (1 - logits.double().softmax(-1).square().sum(-1)).sqrt()
    assert u[0] == 0.0 and u[1] == pytest.approx((1 - 1 / 50) ** 0.5)
    assert torch.allclose(u.double(), brute, atol=1e-6)
    # in a store: example 0's tokens are all certain, example 1 (compressed at rank 2) keeps two unsure tokens
    x = torch.randn(8, 6)
    writer = FeatureStoreWriter(tmp_path / "store", 6, Compression(rank=2), uncertainty=True)
    writer.add(["certain", "mixed", "one"], [3, 4, 1])
    factors = [torch.zeros(3), torch.tensor([1.0, 0.0, 0.5, 0.0]), torch.tensor([0.8])]
    writer.write([0, 1, 2], [x[:3], x[3:7], x[7:]], factors)
    fs = load_features(writer.commit())
    blocks, _ = feature_blocks(fs, "uncertainty")
    grams = [blocks.block(i).T @ blocks.block(i) for i in range(3)]
    assert grams[0].abs().max() == 0
    mixed = torch.outer(x[3], x[3]) + 0.25 * torch.outer(x[5], x[5])
    assert relative_error(grams[1], mixed.double()) < 3e-3  # rank 2: the two unsure tokens, exactly
    result = select_features(fs, SelectionOptions(budget=Budget(examples=3), weighting="uncertainty"))
    assert result.selected[-1] == "certain" and result.gains[-1] == 0.0


def test_uncertainty_needs_the_models_pass(service, llama_dir, tmp_path):
    service.start_worker()
    np.savez(tmp_path / "f.npz", features=np.ones((4, 8), np.float32), offsets=np.arange(5))
    features = service.upload(tmp_path / "f.npz")
    body = {"budget": {"tokens": 300}, "weighting": "uncertainty"}
    refused = service.client.post("/v1/selections", json={"dataset_id": features["id"], **body})
    assert refused.status_code == 422, refused.text
    assert [d["field"] for d in refused.json()["error"]["details"]] == ["body.weighting"]
    text = service.upload(SAMPLE)
    done = service.wait(service.select(dataset_id=text["id"], max_length=64, **body)["id"])
    assert done["status"] == "succeeded", done
    local = embed_dataset(SAMPLE, llama_dir, tmp_path / "local", max_length=64).features
    options = SelectionOptions(budget=Budget(tokens=300), weighting="uncertainty")
    assert done["result"]["weighting"] == "uncertainty"
    assert done["result"]["selected"] == select_features(local, options).selected
    with pytest.raises(FeaturesError, match="weighting 'uncertainty'"):
        select_features(load_features(tmp_path / "f.npz"), options)
    service.stop_workers()  # the comparison stays queued: it is only the request's schema under test
    comparison = {"dataset_id": text["id"], "budget": {"examples": 3}, "weightings": ["tokens", "uncertainty"]}
    queued = service.client.post("/v1/comparisons", json=comparison)
    assert queued.status_code == 202, queued.text
    service.client.post(f"/v1/comparisons/{queued.json()['id']}/cancel")


def test_a_token_budgets_default_is_uncertainty_where_the_model_ran(service, tmp_path):
    service.start_worker()
    rows = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    np.savez(tmp_path / "f.npz", features=rows, offsets=np.arange(5))
    datasets = {"uncertainty": service.upload(SAMPLE), "tokens": service.upload(tmp_path / "f.npz")}
    for expected, dataset in datasets.items():  # a features file has no model: the paper's weighting
        done = service.wait(service.select(dataset_id=dataset["id"], budget={"tokens": 40}, max_length=64)["id"])
        assert done["status"] == "succeeded", done
        assert done["result"]["weighting"] == expected
    assert ComparisonOptions(budget=ComparisonBudget(examples=3)).weightings == ["uncertainty"]


@pytest.mark.slow  # the command line in subprocesses
def test_the_command_line_takes_the_weighting(llama_dir, tmp_path):
    done = run("select", SAMPLE, "--model", llama_dir, "--budget-tokens", 150, "--weighting", "uncertainty")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["weighting"] == "uncertainty"
    np.savez(tmp_path / "f.npz", features=np.ones((4, 8), np.float32), offsets=np.arange(5))
    refused = run("select", tmp_path / "f.npz", "--budget", 2, "--weighting", "uncertainty")
    assert refused.returncode == 2 and "weighting 'uncertainty'" in refused.stderr
