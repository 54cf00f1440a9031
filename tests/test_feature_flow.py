"""An uploaded features file on its way to a store goes one way: read and checked, compressed, written, each once."""

import numpy as np
import pytest

from fishersft.contract.compression import Compression
from fishersft.features import store
from fishersft.features.files import load_features, read_features
from fishersft.features.set import FeaturesError, NpyMember


def write_npz(path, n=30, d=6, bad_example=None):
    """Example i has 1 + i % 8 rows; `bad_example`'s last row holds a NaN."""
    offsets = np.concatenate([[0], np.cumsum(1 + np.arange(n) % 8)]).astype(np.int64)
    features = np.random.default_rng(0).standard_normal((int(offsets[-1]), d)).astype(np.float32)
    if bad_example is not None:
        features[offsets[bad_example + 1] - 1, 1] = np.nan
    np.savez_compressed(path, features=features, offsets=offsets, ids=np.array([f"ex-{i}" for i in range(n)]))
    return int(offsets[-1])


@pytest.mark.parametrize("compression", [Compression(rank=3), Compression(rank=2, dim=4, projection="principal")])
def test_an_uploaded_file_is_read_once_into_the_store_a_checked_load_gives(tmp_path, monkeypatch, compression):
    rows = write_npz(tmp_path / "f.npz")
    monkeypatch.setattr(store, "STAGED_CHUNK_ROWS", 16)
    read = []
    original = NpyMember.__getitem__
    monkeypatch.setattr(NpyMember, "__getitem__", lambda self, s: read.append(s) or original(self, s))

    once = store.compress_store(read_features(tmp_path / "f.npz"), tmp_path / "once", compression)
    assert sum(s.stop - s.start for s in read) == rows  # every row read once, by the compressing pass alone
    read.clear()
    checked = store.compress_store(load_features(tmp_path / "f.npz"), tmp_path / "checked", compression)
    assert sum(s.stop - s.start for s in read) == 2 * rows  # the upload's check at the door reads them first
    for name in sorted(p.name for p in (tmp_path / "checked").iterdir()):
        assert (tmp_path / "once" / name).read_bytes() == (tmp_path / "checked" / name).read_bytes(), name
    assert once.ids == checked.ids


def test_a_non_finite_row_left_unchecked_by_the_reader_stops_the_store_before_it_is_compressed(tmp_path, monkeypatch):
    """The NaN sits in a long example (more rows than the rank), which would be factored: it is refused first,
    named by its example, and no store or partial directory is left."""
    write_npz(tmp_path / "f.npz", bad_example=7)
    raw = read_features(tmp_path / "f.npz")  # reads no row
    compressed = []
    original = store.compress_examples
    monkeypatch.setattr(store, "compress_examples", lambda x, *a: compressed.extend(x) or original(x, *a))
    with pytest.raises(FeaturesError, match="example 7: its features are not finite"):
        store.compress_store(raw, tmp_path / "store", Compression(rank=2))
    assert all(np.isfinite(x.numpy()).all() for x in compressed)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.npz"]
    with pytest.raises(FeaturesError, match="NaN or infinite"):
        load_features(tmp_path / "f.npz")  # the upload's check still refuses it whole
