import json

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from fishersft.contract.compression import Compression
from fishersft.contract.selection import Budget, SelectionOptions
from fishersft.errors import InputError
from fishersft.features.files import load_features
from fishersft.features.set import FeaturesError, FeatureSet
from fishersft.features.store import FeatureStoreWriter
from fishersft.pipeline import select_features

EXACT = Compression(rank=1 << 20)


def arrays(n=5, d=4, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 6, n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return rng.standard_normal((int(offsets[-1]), d)).astype(np.float32), offsets


def write_store(path, features, offsets, ids, compression=EXACT):
    """A features store of every row (rank above every example's rows), written example by example."""
    writer = FeatureStoreWriter(path, features.shape[1], compression)
    writer.add(ids, np.diff(offsets).tolist())
    for i in range(len(ids)):
        writer.write([i], [torch.from_numpy(features[offsets[i] : offsets[i + 1]])])
    return writer


def test_npz_safetensors_and_store_round_trip(tmp_path):
    features, offsets = arrays()
    np.savez(tmp_path / "a.npz", features=features, offsets=offsets, ids=np.array(["a", "b", "c", "d", "e"]))
    save_file(
        {"features": features, "offsets": offsets},
        str(tmp_path / "b.safetensors"),
        metadata={"ids": json.dumps(["v", "w", "x", "y", "z"])},
    )
    save_file({"features": features, "offsets": offsets, "ids": np.arange(10, 15)}, str(tmp_path / "c.safetensors"))
    write_store(tmp_path / "store", features, offsets, [1, 2, 3, 4, 5]).commit()
    assert load_features(tmp_path / "a.npz").ids == ["a", "b", "c", "d", "e"]
    assert load_features(tmp_path / "b.safetensors").ids == ["v", "w", "x", "y", "z"]
    assert load_features(tmp_path / "c.safetensors").ids == [10, 11, 12, 13, 14]
    store = load_features(tmp_path / "store")
    assert isinstance(store.features, np.memmap) and store.features.dtype == np.float16
    np.testing.assert_allclose(store.features, features, atol=2e-3)
    assert store.ids == [1, 2, 3, 4, 5] and store.offsets.tolist() == offsets.tolist()
    assert store.lengths.tolist() == np.diff(offsets).tolist()
    np.testing.assert_allclose(store.means, np.add.reduceat(features, offsets[:-1]) / store.lengths[:, None], atol=2e-3)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f, o: (f[:, 0], o), "`features` must be a 2-D float array"),
        (lambda f, o: (f, o.astype(np.float32)), "`offsets` must be a 1-D integer array"),
        (lambda f, o: (f, o[:-1]), "`offsets` must start at 0 and end at the number of rows"),
        (lambda f, o: (f, np.concatenate([o[:2], o[1:]])), "example 1 has no rows"),
        (lambda f, o: (np.where(np.arange(len(f))[:, None] == 2, np.nan, f), o), "NaN or infinite"),
    ],
)
def test_bad_feature_files_are_explained(tmp_path, change, message):
    features, offsets = change(*arrays())
    np.savez(tmp_path / "bad.npz", features=features, offsets=offsets)
    with pytest.raises(FeaturesError, match=message):
        load_features(tmp_path / "bad.npz")


def test_missing_arrays_ids_and_files(tmp_path):
    features, offsets = arrays()
    np.savez(tmp_path / "no_offsets.npz", features=features)
    np.savez(tmp_path / "short_ids.npz", features=features, offsets=offsets, ids=np.arange(3))
    np.savez(tmp_path / "dup_ids.npz", features=features, offsets=offsets, ids=np.array(["a", "a", "b", "c", "d"]))
    save_file({"features": features}, str(tmp_path / "x.safetensors"))
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    for name, message in [
        ("no_offsets.npz", "missing array\\(s\\) offsets"),
        ("short_ids.npz", "3 ids for 5"),
        ("dup_ids.npz", "ids are not unique"),
        ("x.safetensors", "missing tensor\\(s\\) offsets"),
        ("junk.safetensors", "cannot read features"),
        ("nothing.npz", "no such file"),
    ]:
        with pytest.raises(FeaturesError, match=message):
            load_features(tmp_path / name)


def test_two_writers_of_one_store_never_share_files(tmp_path):
    """Two jobs embedding the same dataset at once: the first complete store stays, the second is dropped."""
    features, offsets = arrays()
    first = write_store(tmp_path / "store", features, offsets, list(range(5)))
    second = write_store(tmp_path / "store", features, offsets, list(range(5)))
    assert first.partial != second.partial
    first.commit()
    in_use = load_features(tmp_path / "store")
    second.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]
    np.testing.assert_allclose(in_use.features, features, atol=2e-3)
    np.testing.assert_allclose(load_features(tmp_path / "store").features, features, atol=2e-3)


def test_length_ratio_and_the_long_examples_warning():
    """Four one-token examples and one of twenty tokens: fisher's single pick under an example budget is the
    long one (twenty directions beat one), 20 / 4.8 = 4.17 times the dataset's mean length: a warning."""
    rng = np.random.default_rng(0)
    lengths = [1, 1, 1, 1, 20]
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    features = FeatureSet(rng.standard_normal((24, 8)).astype(np.float32), offsets, ["a", "b", "c", "d", "long"])
    by_examples = select_features(
        features, SelectionOptions(budget=Budget(examples=1), weighting="tokens")
    )  # the paper's
    assert by_examples.selected == ["long"] and by_examples.weighting == "tokens"
    assert by_examples.length_ratio == pytest.approx(20 / 4.8)
    assert "4.2x the loss tokens" in by_examples.warnings[0]
    assert (
        select_features(features, SelectionOptions(budget=Budget(examples=1))).weighting == "mean"
    )  # the example budget's default
    by_tokens = select_features(features, SelectionOptions(budget=Budget(tokens=4)))
    assert by_tokens.weighting == "tokens"  # the token budget's default for features without a model
    assert by_tokens.length_ratio == pytest.approx(1 / 4.8)
    assert not any("loss tokens of a random subset" in w for w in by_tokens.warnings)
    short = select_features(features, SelectionOptions(budget=Budget(examples=2), method="random", seed=0), exclude=[4])
    assert short.length_ratio == pytest.approx(1 / 4.8) and short.warnings == []


def test_a_selection_in_a_regime_the_study_says_another_method_won_says_so():
    """Fisher under an example budget, or at a realistic share of the pool's loss tokens, warns and names the
    method the study found ahead; a small token budget and random selections do not."""
    lengths = [10] * 100
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    rng = np.random.default_rng(0)
    features = FeatureSet(rng.standard_normal((1000, 8)).astype(np.float32), offsets, [str(i) for i in range(100)])

    def warned(**options: object) -> list[str]:
        return select_features(features, SelectionOptions.model_validate(options)).warnings

    assert warned(budget={"tokens": 20}) == []  # 2% of the pool's loss tokens: small
    (realistic,) = warned(budget={"tokens": 100})
    assert "10% of the pool's loss tokens" in realistic and "`loss`" in realistic
    assert "fisher/tokens was behind random" in realistic  # features without a model: the paper's weighting
    (unstudied,) = warned(budget={"tokens": 100}, weighting="examples")
    assert "not measured under weighting 'examples'" in unstudied
    (by_examples,) = warned(budget={"examples": 5})
    assert "example budget" in by_examples
    assert warned(budget={"tokens": 100}, method="random") == []


def test_groups_covered_are_counted_on_the_rows_grouping_field():
    """Five examples in three categories and two sources; the result counts the selection's distinct groups
    against those of the examples it could choose from (a held-out example's group is not counted)."""
    lengths = [1, 1, 1, 1, 20]
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    features = FeatureSet(np.random.default_rng(0).standard_normal((24, 8)).astype(np.float32), offsets, list(range(5)))
    labels = [
        {"category": "a", "source": "x"},
        {"category": "a", "source": "x"},
        {"category": "b", "source": "y"},
        {"source": "y"},
        {"category": "c", "source": "y"},
    ]
    chosen = select_features(
        features, SelectionOptions(budget=Budget(examples=2), method="random", seed=0), labels=labels
    )
    expected = len({labels[i].get("category") for i in chosen.selected} - {None})
    assert chosen.groups.model_dump(exclude={"counts"}) == {"field": "category", "covered": expected, "total": 3}
    everything = select_features(
        features, SelectionOptions(budget=Budget(examples=5), group_by="source"), labels=labels
    )
    assert everything.groups.model_dump() == {"field": "source", "covered": 2, "total": 2, "counts": {"x": 2, "y": 3}}
    held_out = select_features(features, SelectionOptions(budget=Budget(examples=4)), labels=labels, exclude=[4])
    assert held_out.groups.model_dump() == {"field": "category", "covered": 2, "total": 2, "counts": {"a": 2, "b": 1}}
    assert (
        select_features(features, SelectionOptions(budget=Budget(examples=1))).groups is None
    )  # features input: no rows
    no_field = [{"language": "en"}] * 5
    assert select_features(features, SelectionOptions(budget=Budget(examples=1)), labels=no_field).groups is None
    with pytest.raises(InputError, match="no row of the dataset has a string field 'topic'"):
        select_features(features, SelectionOptions(budget=Budget(examples=1), group_by="topic"), labels=labels)


@pytest.mark.parametrize("kind", ["npz", "npz_compressed", "safetensors"])
@pytest.mark.parametrize("compression", [Compression(rank=3), Compression(rank=2, dim=5, projection="principal")])
def test_uploaded_files_are_validated_and_compressed_a_chunk_at_a_time_into_the_same_store(
    tmp_path, monkeypatch, kind, compression
):
    """An uploaded file's rows are read a chunk at a time (from the .npz's zip member, or memory-mapped from the
    .safetensors), never whole; the store they compress into is, file for file, the one in-memory arrays give."""
    from fishersft.features import files, store
    from fishersft.features.set import NpyMember

    monkeypatch.setattr(files, "FINITE_CHECK_ROWS", 7)
    monkeypatch.setattr(store, "STAGED_CHUNK_ROWS", 16)
    rng = np.random.default_rng(3)
    offsets = np.concatenate([[0], np.cumsum(rng.integers(1, 6, 40))]).astype(np.int64)
    features = rng.standard_normal((int(offsets[-1]), 8)).astype(np.float32)
    ids = [f"ex-{i}" for i in range(40)]
    path = tmp_path / ("f.safetensors" if kind == "safetensors" else "f.npz")
    if kind == "safetensors":
        save_file({"features": features, "offsets": offsets}, str(path), metadata={"ids": json.dumps(ids)})
    else:
        (np.savez_compressed if kind == "npz_compressed" else np.savez)(
            path, features=features, offsets=offsets, ids=np.array(ids)
        )
    loaded = load_features(path)
    assert isinstance(loaded.features, NpyMember if kind != "safetensors" else np.memmap)
    in_memory = FeatureSet(features, offsets, ids)
    chunked = store.compress_store(loaded, tmp_path / "chunked", compression)
    whole = store.compress_store(in_memory, tmp_path / "whole", compression)
    names = sorted(p.name for p in (tmp_path / "whole").iterdir())
    assert sorted(p.name for p in (tmp_path / "chunked").iterdir()) == names and "features.npy" in names
    for name in names:
        assert (tmp_path / "chunked" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    assert chunked.ids == whole.ids == ids


def test_a_non_finite_row_deep_in_a_deflated_npz_is_found_by_the_chunked_check(tmp_path, monkeypatch):
    from fishersft.features import files

    monkeypatch.setattr(files, "FINITE_CHECK_ROWS", 4)
    features, offsets = arrays(n=10, d=4)
    features[-1, 2] = np.inf
    np.savez_compressed(tmp_path / "f.npz", features=features, offsets=offsets)
    with pytest.raises(FeaturesError, match="NaN or infinite"):
        load_features(tmp_path / "f.npz")
