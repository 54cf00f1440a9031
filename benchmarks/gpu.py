"""GPU figures in one run: selection on the device, embedding and LoRA training with the default model.

    python benchmarks/gpu.py [--device cuda|cpu] [--quick]

Each section prints its figures as it measures them; the last line is one JSON object with `device`, `torch`,
`selection` (a list: n, k, seconds, evaluations, same_picks_as_lazy, ...), `embedding` and `training`.

- selection: synthetic features shaped as a large dataset's default compression (rank 16 rows in 256
  dimensions, benchmarks/synthetic.py), `batched` greedy under an example budget, and lazy greedy on the same
  blocks where it runs in time (100k x 1,000; not at 1M x 10,000): the same picks is asserted by the tests,
  reported here. Full: 100k x 1,000 and 1M x 10,000; --quick: 2,000 x 50.
- embedding: `pipeline.embed_dataset` over real chatterbot-corpus conversations (full: all 28 languages;
  --quick: 48 English ones) with the default model: tokens (the model's input, loss tokens apart), tokens/s.
- training: one LoRA fine-tune (`training.lora.train_lora`, one epoch, batches of the device's default token
  budget) of the default model on chatterbot English (full: 512 conversations; --quick: 16): tokens/s over the
  examples trained on; then the comparison behind POST /v1/comparisons (fisher and 3 random subsets at K
  examples and at equal loss tokens, each evaluated 4 times; full: K=100 of all 28 languages' conversations;
  --quick: K=4 of 60 English ones, one random subset, one evaluation): `comparison_s`, its embedding apart.

Full run: about 8 minutes on an H200 at most; --quick: under 5 minutes on 2 CPU cores.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import synthetic  # benchmarks/ is on the path of a script run from it
import torch

from fishersft.contract.batching import default_batch_tokens
from fishersft.contract.comparison import ComparisonBudget, ComparisonOptions
from fishersft.contract.selection import Budget
from fishersft.contract.training import LoraConfig, TrainingConfig
from fishersft.data import corpora
from fishersft.data.dataset import DEFAULT_MAX_LENGTH
from fishersft.data.encoding import encode_file
from fishersft.models.loading import load_model, resolve_device
from fishersft.models.registry import DEFAULT_MODEL, resolve_model
from fishersft.pipeline import embed_dataset
from fishersft.selection.blocks import FeatureBlocks
from fishersft.selection.selector import select_blocks
from fishersft.training.comparison import compare
from fishersft.training.lora import train_lora

RANK, DIM = 16, 256
"""The default compression of a dataset of a million examples."""
GENERATE_CHUNK = 50_000


def report(section: str, **figures: Any) -> dict[str, Any]:
    """Print one measured figure at once (a run cut short still shows what it reached)."""
    print(json.dumps({"section": section, **figures}), flush=True)
    return figures


def synthetic_blocks(n: int, seed: int = 0) -> FeatureBlocks:
    """n examples of min(loss tokens, RANK) float16 rows in DIM dimensions, generated a chunk at a time."""
    g = torch.Generator().manual_seed(seed)
    counts = synthetic.lengths(n, g).clamp(max=RANK)
    topics = synthetic.Topics.draw(DIM, g)
    offsets = torch.zeros(n + 1, dtype=torch.int64)
    offsets[1:] = counts.cumsum(0)
    chunks = (synthetic.rows(part, topics, g).to(torch.float16) for part in counts.split(GENERATE_CHUNK))
    return FeatureBlocks(offsets, DIM, chunks)


def selection_section(args: argparse.Namespace) -> list[dict[str, Any]]:
    """`batched` greedy against lazy greedy on the device, on synthetic features."""
    runs = [(2_000, 50, True)] if args.quick else [(100_000, 1_000, True), (1_000_000, 10_000, False)]
    device = resolve_device(args.device)
    figures = []
    for n, k, with_lazy in runs:
        start = time.perf_counter()
        blocks = synthetic_blocks(n)
        built_s = time.perf_counter() - start
        lengths = blocks.counts
        timed = {}
        for algorithm in ("batched", "lazy") if with_lazy else ("batched",):
            _synchronize(device)
            start = time.perf_counter()
            picked = select_blocks(blocks, lengths, Budget(examples=k), algorithm=algorithm, device=device)
            _synchronize(device)
            timed[algorithm] = (time.perf_counter() - start, picked)
            report("selection", n=n, k=k, algorithm=algorithm, seconds=timed[algorithm][0])
        seconds, batched = timed["batched"]
        lazy = timed.get("lazy")
        figures.append(
            report(
                "selection",
                n=n,
                k=k,
                rank=RANK,
                dim=DIM,
                algorithm="batched",
                seconds=round(seconds, 3),
                evaluations=batched.evaluations,
                objective=batched.objective,
                same_picks_as_lazy=None if lazy is None else lazy[1].indices == batched.indices,
                lazy_seconds=None if lazy is None else round(lazy[0], 3),
                lazy_evaluations=None if lazy is None else lazy[1].evaluations,
                features_s=round(built_s, 1),
            )
        )
    return figures


def embedding_section(args: argparse.Namespace) -> dict[str, Any]:
    """The embedder's throughput with the default model on real conversations."""
    languages = ["english"] if args.quick else corpora.chatterbot_languages()
    rows = corpora.chatterbot(languages)[: 48 if args.quick else None]
    model_dir = resolve_model(DEFAULT_MODEL)
    with tempfile.TemporaryDirectory() as work:
        data = Path(work) / "data.jsonl"
        corpora.write_jsonl(rows, data)
        result = embed_dataset(data, model_dir, Path(work) / "store", device=args.device)
        _, tokenizer = load_model(model_dir, torch.device("cpu"))
        tokens = sum(len(e.input_ids) for e in encode_file(data, tokenizer, DEFAULT_MAX_LENGTH)[1])
    seconds = result.seconds - result.load_seconds
    return report(
        "embedding",
        model=DEFAULT_MODEL,
        examples=len(rows),
        tokens=tokens,
        loss_tokens=result.features.n_tokens,
        seconds=round(seconds, 2),
        load_seconds=round(result.load_seconds, 2),
        tokens_per_s=round(tokens / seconds),
        padding_fraction=round(result.padding, 4),
    )


def training_section(args: argparse.Namespace) -> dict[str, Any]:
    """One LoRA fine-tune of the default model, one epoch at the default settings."""
    rows = corpora.chatterbot(["english"])[: 16 if args.quick else 512]
    device = resolve_device(args.device)
    model, tokenizer = load_model(resolve_model(DEFAULT_MODEL), device)
    with tempfile.TemporaryDirectory() as work:
        data = Path(work) / "data.jsonl"
        corpora.write_jsonl(rows, data)
        _, encoded = encode_file(data, tokenizer, DEFAULT_MAX_LENGTH)
    settings = TrainingConfig(epochs=1, batch_size=64, batch_tokens=default_batch_tokens(device.type))
    _synchronize(device)
    start = time.perf_counter()
    trained = train_lora(model, encoded, LoraConfig(), settings)
    _synchronize(device)
    seconds = time.perf_counter() - start
    tokens = sum(len(e.input_ids) for e in encoded)
    return report(
        "training",
        model=DEFAULT_MODEL,
        examples=len(encoded),
        steps=trained.steps,
        batch_size=settings.batch_size,
        tokens=tokens,
        seconds=round(seconds, 2),
        tokens_per_s=round(tokens / seconds),
        final_loss=trained.train_loss[-1],
        comparison_s=comparison_seconds(args, device),
    )


def comparison_seconds(args: argparse.Namespace, device: torch.device) -> float:
    """Seconds of `training.comparison.compare` (selections, trainings, evaluations), the embedding apart."""
    rows = corpora.chatterbot(["english"])[:60] if args.quick else corpora.chatterbot(corpora.chatterbot_languages())
    model_dir = resolve_model(DEFAULT_MODEL)
    options = ComparisonOptions(
        budget=ComparisonBudget(examples=4 if args.quick else 100),
        random_seeds=1 if args.quick else 3,
        eval_points=1 if args.quick else 4,
        training=TrainingConfig(batch_size=64, batch_tokens=default_batch_tokens(device.type)),
    )
    with tempfile.TemporaryDirectory() as work:
        data = Path(work) / "data.jsonl"
        corpora.write_jsonl(rows, data)
        features = embed_dataset(data, model_dir, Path(work) / "store", device=args.device).features
        _synchronize(device)
        start = time.perf_counter()
        compare(data, model_dir, DEFAULT_MODEL, features, options, device=device)
        _synchronize(device)
    return round(time.perf_counter() - start, 2)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: cuda if available")
    parser.add_argument("--quick", action="store_true", help="small sizes: minutes on 2 CPU cores")
    args = parser.parse_args()
    device = resolve_device(args.device)
    args.device = device.type
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__} on {name}", file=sys.stderr, flush=True)
    summary = {
        "device": name,
        "torch": torch.__version__,
        "quick": args.quick,
        "selection": selection_section(args),
        "embedding": embedding_section(args),
        "training": training_section(args),
    }
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
