"""Compressed features (rank and projection), selection from a float16 store in bounded memory, stochastic
greedy, and the embedder's streaming."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from fishersft import pipeline
from fishersft.contract.compression import Compression, default_compression, resolve_compression
from fishersft.contract.selection import Budget, SelectionOptions
from fishersft.features.compression import low_rank_rows
from fishersft.features.files import load_features
from fishersft.features.set import PROJECTION_FILE, FeatureSet
from fishersft.features.store import FeatureStoreWriter, compress_store
from fishersft.pipeline import embed_dataset, select_features
from fishersft.selection import select
from fishersft.selection.selector import stochastic_sample_size
from tests.conftest import SAMPLE


def raw_features(n=40, d=16, max_rows=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, max_rows + 1, (n,), generator=g)
    offsets = torch.zeros(n + 1, dtype=torch.int64)
    offsets[1:] = lengths.cumsum(0)
    spread = torch.logspace(0, -1, d)
    features = (torch.randn(int(offsets[-1]), d, generator=g) * spread + 0.5).to(torch.float16)
    return FeatureSet(features.numpy(), offsets.numpy(), [f"ex{i}" for i in range(n)])


@pytest.mark.parametrize("weighting", ["tokens", "examples", "mean"])
@pytest.mark.parametrize("budget", [Budget(examples=8), Budget(tokens=40)])
def test_compression_is_exact_when_no_example_has_more_rows_than_the_rank(tmp_path, weighting, budget):
    raw = raw_features()
    store = compress_store(raw, tmp_path / "store", Compression(rank=10))
    assert np.array_equal(np.asarray(store.features), raw.features)  # the very rows, bit for bit
    assert store.offsets.tolist() == raw.offsets.tolist() and store.ids == raw.ids
    chosen = select_features(store, SelectionOptions(budget=budget, weighting=weighting))
    before = select(torch.from_numpy(raw.features).float(), torch.from_numpy(raw.offsets), budget, weighting=weighting)
    assert chosen.selected == [raw.ids[i] for i in before.indices]
    # the store keeps means as float16, like its rows; the in-memory path averages in float32
    assert chosen.objective == pytest.approx(before.objective, rel=1e-4 if weighting == "mean" else 1e-6)
    assert chosen.compression.model_dump() == {
        "rank": 10,
        "dim": 16,
        "projection": "principal",
        "seed": 0,
        "source_dim": 16,
    }


@pytest.mark.parametrize(("n", "d"), [(30, 12), (20, 8)])  # fewer dimensions than rows, and more
def test_the_rank_r_factor_reproduces_the_top_eigenpairs_of_x_t_x(n, d):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.logspace(0, -1.5, d, dtype=torch.float64)
    factor = low_rank_rows(x[None], 3)[0]
    assert factor.shape == (3, d)
    values, vectors = torch.linalg.eigh(x.T @ x)
    got_values, got_vectors = torch.linalg.eigh(factor.T @ factor)
    torch.testing.assert_close(got_values[-3:], values[-3:], rtol=1e-9, atol=0)
    assert torch.allclose((got_vectors[:, -3:] * vectors[:, -3:]).sum(0).abs(), torch.ones(3, dtype=torch.float64))
    assert float(got_values[:-3].abs().max()) < 1e-9 * float(values[-1])  # rank 3 exactly


def test_a_long_examples_rows_are_its_rank_r_factor_in_the_store(tmp_path):
    raw = raw_features(n=12, max_rows=30, seed=3)
    store = compress_store(raw, tmp_path / "store", Compression(rank=4))
    assert store.lengths.tolist() == np.diff(raw.offsets).tolist()  # the costs stay the loss tokens
    assert np.diff(store.offsets).tolist() == np.minimum(np.diff(raw.offsets), 4).tolist()
    for i in range(12):
        x = torch.from_numpy(raw.features[raw.offsets[i] : raw.offsets[i + 1]]).double()
        f = torch.from_numpy(store.read_rows(store.offsets[i], store.offsets[i + 1])).double()
        values, vectors = torch.linalg.eigh(x.T @ x)
        best = (vectors[:, -4:] * values[-4:]) @ vectors[:, -4:].T
        torch.testing.assert_close(f.T @ f, best, atol=2e-3 * float(values[-1]), rtol=0)
        torch.testing.assert_close(torch.from_numpy(np.array(store.means[i])).double(), x.mean(0), atol=2e-3, rtol=0)


def test_projections_are_seeded_and_recorded(tmp_path):
    raw = raw_features(d=16, max_rows=12)
    gaussian = Compression(rank=6, dim=5, projection="gaussian", seed=1)
    first = compress_store(raw, tmp_path / "a", gaussian)
    again = compress_store(raw, tmp_path / "b", gaussian)
    other = compress_store(raw, tmp_path / "c", Compression(rank=6, dim=5, projection="gaussian", seed=2))
    assert first.features.shape[1] == 5
    assert np.array_equal(first.features, again.features) and not np.array_equal(first.features, other.features)
    assert first.meta["compression"] == {**gaussian.model_dump(), "source_dim": 16}
    assert load_features(tmp_path / "a").compression == gaussian
    principal = compress_store(raw, tmp_path / "p", Compression(rank=6, dim=5))
    projection = torch.from_numpy(np.load(tmp_path / "p" / PROJECTION_FILE)).double()
    x = torch.from_numpy(raw.features).double()
    top = torch.linalg.eigh(x.T @ x).eigenvectors[:, -5:]
    torch.testing.assert_close(projection.T @ projection, torch.eye(5, dtype=torch.float64), atol=1e-5, rtol=0)
    alignment = (projection.T @ top).abs().max(0).values  # each principal direction is a column, up to sign
    torch.testing.assert_close(alignment, torch.ones(5, dtype=torch.float64), atol=1e-4, rtol=0)
    means = torch.from_numpy(np.array(principal.means)).double()
    raw_means = torch.from_numpy(raw.mean_rows()).double()
    torch.testing.assert_close(means, raw_means @ projection, atol=5e-3, rtol=5e-3)
    result = select_features(principal, SelectionOptions(budget=Budget(examples=3)))
    assert result.dim == 5 and result.compression is not None and result.compression.projection == "principal"


def test_stochastic_greedy_is_seeded_close_to_lazy_and_evaluates_fewer_gains():
    g = torch.Generator().manual_seed(0)
    n, rows, d = 3000, 4, 24
    centres = torch.randn(40, d, generator=g)
    owner = torch.randint(0, 40, (n,), generator=g).repeat_interleave(rows)
    features = centres[owner] + 0.3 * torch.randn(n * rows, d, generator=g)
    offsets = torch.arange(0, n * rows + 1, rows)
    budget = Budget(examples=30)
    lazy = select(features, offsets, budget)
    fast = select(features, offsets, budget, algorithm="stochastic", epsilon=0.1, seed=1)
    assert fast.indices == select(features, offsets, budget, algorithm="stochastic", epsilon=0.1, seed=1).indices
    assert fast.indices != select(features, offsets, budget, algorithm="stochastic", epsilon=0.1, seed=2).indices
    assert len(fast.indices) == 30 and len(set(fast.indices)) == 30
    assert fast.objective >= 0.98 * lazy.objective
    assert fast.evaluations < lazy.evaluations / 3
    held_out = select(features, offsets, Budget(tokens=40), algorithm="stochastic", exclude=range(1000))
    assert len(held_out.indices) == 10 and min(held_out.indices) >= 1000


def test_stochastic_sample_size_is_n_over_k_log_one_over_epsilon():
    assert stochastic_sample_size(1_000_000, 10_000, 0.01) == 461  # 100 * ln(100) = 460.5
    assert stochastic_sample_size(50, 10, 1e-9) == 50  # never more than N
    with pytest.raises(ValueError, match="epsilon"):
        stochastic_sample_size(10, 2, 1.5)


def test_the_embedder_streams_chunks_to_the_same_store(tmp_path, llama_dir, monkeypatch):
    whole = embed_dataset(SAMPLE, llama_dir, tmp_path / "whole", max_length=64).features
    monkeypatch.setattr(pipeline.embedding, "ENCODE_CHUNK", 7)
    chunked = embed_dataset(SAMPLE, llama_dir, tmp_path / "chunked", max_length=64).features
    assert chunked.ids == whole.ids and chunked.offsets.tolist() == whole.offsets.tolist()
    assert chunked.lengths.tolist() == whole.lengths.tolist()
    np.testing.assert_allclose(np.asarray(chunked.means), np.asarray(whole.means), atol=2e-2)  # other batches


MEMORY_CHILD = """
import json, sys
from fishersft.features.files import load_features
from fishersft.pipeline import select_features
from fishersft.contract.selection import Budget, SelectionOptions

def peak():  # VmHWM: this process's own peak (ru_maxrss would carry over the parent's across exec)
    line = next(x for x in open("/proc/self/status") if x.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024

store = load_features(sys.argv[1])
before = peak()
result = select_features(store, SelectionOptions(budget=Budget(examples=3), weighting="tokens"), device="cpu")
print(json.dumps({"before": before, "after": peak(), "selected": result.selected}))
"""


@pytest.mark.slow  # selects in a subprocess
def test_selection_holds_the_float16_store_once_not_a_float32_copy(tmp_path):
    """60,000 examples of 8 rows, d = 576: a 553 MB float16 store. Selection keeps it as float16 blocks, read
    a chunk at a time, plus bounded scratch; the float32 copy the selection used to make is alone 1.1 GB."""
    n, rows, d = 60_000, 8, 576
    writer = FeatureStoreWriter(tmp_path / "store", d, Compression(rank=rows))
    writer.add(list(range(n)), [rows] * n)
    g = torch.Generator().manual_seed(0)
    for first in range(0, n, 2000):
        block = torch.randn(2000 * rows, d, generator=g).to(torch.float16)
        writer.write(range(first, first + 2000), block.split(rows))
    store = writer.commit()
    float32_copy, store_bytes = n * rows * d * 4, n * rows * d * 2  # the float16 blocks must be there, once
    child = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(store)], capture_output=True, text=True)
    assert child.returncode == 0, child.stderr
    report = json.loads(child.stdout)
    grown = report["after"] - report["before"]
    assert len(report["selected"]) == 3
    assert 0.8 * store_bytes < grown < float32_copy, f"selection grew by {grown / 2**20:.0f} MiB"


def test_the_default_compression_is_the_most_faithful_that_fits_the_memory():
    assert default_compression(1_000, 576) == Compression(rank=64)
    assert default_compression(116_000, 576) == Compression(rank=64)  # 116k x 64 x 576 x 2 bytes: 7.98 GiB
    assert default_compression(200_000, 576) == Compression(rank=32)
    assert default_compression(1_000_000, 576) == Compression(rank=16, dim=256)
    assert default_compression(1_000_000, 576, memory_bytes=80 << 30) == Compression(rank=64)
    assert default_compression(10**9, 576) == Compression(rank=8, dim=128)  # the last step, whatever the size
    # a request's own fields win; the ones it leaves out come from the size
    assert resolve_compression(8, None, "principal", 1_000, 576) == Compression(rank=8)
    assert resolve_compression(None, 100, "gaussian", 1_000, 576) == Compression(
        rank=64, dim=100, projection="gaussian"
    )
    assert resolve_compression(None, None, "principal", 1_000_000, 576) == Compression(rank=16, dim=256)
