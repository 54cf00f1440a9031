"""Pre-logit features of a dataset: the embedder's pass, the compressed store it writes, and feature files.

Three layouts are read:
- a features store, the directory the embedder writes: features.npy (float16; at most `rank` rows per example,
  see `compression`), offsets.npy, lengths.npy (loss tokens per example), means.npy (each example's mean
  feature), losses.npy (each example's loss) and, once method ifd asked for it, ifd.npy (see `scores`),
  uncertainty.npy and uncertain.npy (what weighting `uncertainty` reads, see `store.FeatureStoreWriter`),
  ids.json and meta.json (the compression, truncation);
- `.npz` with arrays `features`, `offsets` and optionally `ids`;
- `.safetensors` with tensors `features`, `offsets` and optionally `ids` (integers), or string ids as a JSON
  list in the metadata key `ids`.
Without ids, example i has id i. Uploaded files hold every loss token's row; selection compresses them into a
store first (`store.compress_store`), as the embedder does.

A file goes one way through this package: read and validated (`files`: its structure on opening; its rows by
`files.load_features` at upload, or as they are read), compressed (`compression`), written (`store`), each once,
a chunk at a time; the store is then opened for selection (`files.load_features`, which trusts the rows the
writer checked)."""
