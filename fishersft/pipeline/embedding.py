"""Dataset to features store: a JSONL dataset read a chunk at a time, embedded by the model into a compressed
features store (fishersft.features), and, for method ifd alone, the store's IFD scores added by a second pass."""

import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fishersft.contract.batching import default_batch_tokens
from fishersft.contract.compression import DEFAULT_COMPRESSION, Compression
from fishersft.data.dataset import DEFAULT_MAX_LENGTH, ENCODE_CHUNK, Example, iter_examples
from fishersft.data.encoding import Encoded, encode_all, response_alone
from fishersft.features.embedding import PassCost, embed
from fishersft.features.files import load_features, save_difficulty
from fishersft.features.scores import LossHead, ifd
from fishersft.features.set import FeatureSet
from fishersft.features.store import FeatureStoreWriter
from fishersft.models.loading import Precision, embedding_autocast, load_model, resolve_device
from fishersft.pipeline.progress import Progress

ModelLoader = Callable[[Path, torch.device], tuple[PreTrainedModel, PreTrainedTokenizerBase]]


@dataclass
class Embedding:
    features: FeatureSet
    truncated: int
    """Examples cut to max_length."""
    seconds: float
    load_seconds: float
    """Of which loading the model."""
    padding: float = 0.0
    """Of the tokens the model computed, the share that was padding."""


def embed_dataset(
    data: str | Path,
    model_dir: str | Path,
    out_dir: str | Path,
    *,
    max_length: int = DEFAULT_MAX_LENGTH,
    batch_size: int | None = None,
    device: str | None = None,
    precision: Precision = "auto",
    compression: Compression = DEFAULT_COMPRESSION,
    progress: Progress | None = None,
    load: ModelLoader = load_model,
    examples: tuple[int, int] | None = None,
    batch_tokens: int | None = None,
) -> Embedding:
    """Read a JSONL dataset a chunk at a time, run the model over it and write its compressed features store, with
    each example's loss and each loss token's uncertainty (see `features.scores`), to `out_dir`. `precision`:
    see `embedding_autocast`. `load` loads the model (a worker passes a cached loader). A batch holds at most
    `batch_tokens` padded tokens (default: `default_batch_tokens` of the device) and, when given, `batch_size`
    examples.

    `examples=(first, stop)`: embed only those examples, as one shard's part of the store (see
    `features.assemble_store`); `first` a multiple of ENCODE_CHUNK, so batches are the ones a single run makes."""
    start = time.perf_counter()
    resolved = resolve_device(device)
    model, tokenizer = load(Path(model_dir), resolved)
    load_seconds = time.perf_counter() - start
    dim = model.get_output_embeddings().weight.shape[1]
    from_example, to_example = examples or (0, None)
    if from_example % ENCODE_CHUNK:
        raise ValueError(f"a part must start at a multiple of {ENCODE_CHUNK} examples, not {from_example}")
    total = (to_example if to_example is not None else count_lines(data)) - from_example
    meta = {"max_length": max_length}
    writer = FeatureStoreWriter(out_dir, dim, compression, meta, part=examples is not None, uncertainty=True)
    truncated = done = 0
    cost = PassCost()
    batch_tokens = batch_tokens or default_batch_tokens(resolved.type)
    dtype = embedding_autocast(resolved, precision)
    try:
        chunks = example_chunks(data, ENCODE_CHUNK, from_example, to_example)
        for chunk, encoded in encoded_ahead(chunks, tokenizer, max_length):
            first = len(writer.ids)
            writer.add([ex.id for ex in chunk], [len(e.targets) for e in encoded])
            truncated += sum(e.truncated for e in encoded)

            def on_batch(in_chunk: int, done: int = done) -> None:
                if progress:
                    progress("embedding", done + in_chunk, max(total, done + in_chunk))

            chunk_cost = embed(model, encoded, writer, batch_tokens, on_batch, dtype, first, batch_size)
            cost.add(chunk_cost.computed, chunk_cost.tokens)
            done += len(chunk)
        writer.meta["truncated"] = truncated
        features = load_features(writer.commit())
    except BaseException:
        writer.abort()
        raise
    return Embedding(features, truncated, time.perf_counter() - start, load_seconds, cost.padding)


def score_difficulty(
    data: str | Path,
    model_dir: str | Path,
    store: str | Path,
    *,
    batch_size: int | None = None,
    device: str | None = None,
    precision: Precision = "auto",
    progress: Progress | None = None,
    load: ModelLoader = load_model,
    batch_tokens: int | None = None,
) -> FeatureSet:
    """Add each example's IFD to the features `store` that `embed_dataset` wrote from `data` with this model, and
    return the store. IFD divides the loss the store keeps by the loss of the same tokens without their prompt:
    one more forward pass over the responses alone (`features.scores.ifd`), about a third of the embedding's
    cost, paid only by method ifd. The store gains ifd.npy whole (renamed into place); the options are
    `embed_dataset`'s."""
    features = load_features(store)
    if features.losses is None:
        raise ValueError(f"{Path(store).name}: no losses to score IFD from (not a store the embedder wrote)")
    resolved = resolve_device(device)
    model, tokenizer = load(Path(model_dir), resolved)
    head, dtype = LossHead(model), embedding_autocast(resolved, precision)
    batch_tokens = batch_tokens or default_batch_tokens(resolved.type)
    losses = torch.from_numpy(np.asarray(features.losses, dtype=np.float64)).to(resolved)
    scores, done, total = [], 0, len(features.ids)
    for chunk in example_chunks(data, ENCODE_CHUNK):
        if [ex.id for ex in chunk] != features.ids[done : done + len(chunk)]:
            raise ValueError(f"{Path(store).name}: not the features of {Path(data).name} (ids differ)")
        encoded = encode_all(chunk, tokenizer, int(features.meta["max_length"]))
        alone = [response_alone(ex, enc, tokenizer) for ex, enc in zip(chunk, encoded, strict=True)]
        with torch.inference_mode():
            scores.append(ifd(model, head, losses[done : done + len(chunk)], alone, batch_tokens, dtype, batch_size))
        done += len(chunk)
        if progress:
            progress("scoring", done, max(total, done))
    if done != total:
        raise ValueError(f"{Path(store).name}: {total} examples, {Path(data).name} {done}")
    features.ifd = torch.cat(scores).cpu().numpy() if scores else np.ones(0)
    save_difficulty(Path(store), features.ifd)
    return features


def encoded_ahead(
    chunks: Iterable[list[Example]], tokenizer: PreTrainedTokenizerBase, max_length: int
) -> Iterator[tuple[list[Example], list[Encoded]]]:
    """Each chunk with its encodings, encoded on a thread of its own one chunk ahead of the caller: the tokenizer
    works while the model runs over the chunk before (else a GPU waits for it at every chunk)."""

    def encode(chunk: list[Example]) -> tuple[list[Example], list[Encoded]]:
        return chunk, encode_all(chunk, tokenizer, max_length)

    with ThreadPoolExecutor(1, thread_name_prefix="encoder") as pool:
        ahead: Future[tuple[list[Example], list[Encoded]]] | None = None
        for chunk in chunks:
            following = pool.submit(encode, chunk)
            if ahead is not None:
                yield ahead.result()
            ahead = following
        if ahead is not None:
            yield ahead.result()


def example_chunks(data: str | Path, size: int, first: int = 0, stop: int | None = None) -> Iterator[list[Example]]:
    """The dataset's examples first:stop, validated as they are read, `size` at a time. Lines before `first`
    are skipped unparsed; line numbers (in errors, and default ids) stay the file's."""
    with open(data, "rb") as f:
        lines = enumerate(f, start=1)
        skipped = 0
        while skipped < first:
            skipped += bool(next(lines)[1].strip())
        chunk: list[Example] = []
        for example in itertools.islice(iter_examples(lines), None if stop is None else stop - first):
            chunk.append(example)
            if len(chunk) == size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk


def count_lines(path: str | Path) -> int:
    """Non-blank lines: the examples of a valid dataset, for progress before it is read."""
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())
