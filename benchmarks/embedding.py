"""Embedding on the real default model: throughput against a bare forward pass, and float32 vs bfloat16.

    python benchmarks/embedding.py [--model smollm2-135m-instruct] [--data FILE.jsonl] [--batch-tokens 2048]
                                   [--out benchmarks/results/embedding.json]

Data: chatterbot-corpus English (from the installed package) unless --data names a JSONL file. Reported in loss
tokens per second, each run twice, alternating, the faster counting:
- embedder: `embed()`, i.e. padding, the body's forward pass, the gather of the loss positions, float16
  conversion and the write to the features store (on the writer's thread);
- bare forward: the body's forward pass alone on the same padded, length-sorted batches (the floor);
batches cut at --batch-tokens padded tokens (default: the CPU's), or at --batch-size examples (the embedder
before token budgets) when that is given instead.
each in float32 and under bfloat16 autocast. Then the selection agreement of the two precisions: fisher under
an example budget and under a loss-token budget from each precision's features, the overlap of the selected
ids, and the objective of each subset evaluated on the float32 features.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fishersft.contract.batching import default_batch_tokens
from fishersft.contract.compression import Compression
from fishersft.contract.selection import Budget
from fishersft.data import corpora
from fishersft.data.dataset import read_jsonl
from fishersft.data.encoding import encode_all
from fishersft.features.embedding import embed
from fishersft.features.files import load_features
from fishersft.features.store import FeatureStoreWriter
from fishersft.models.batching import length_sorted_batches, padded_tokens
from fishersft.models.forward import lengths, pad_batch
from fishersft.models.loading import autocast, load_model
from fishersft.models.registry import DEFAULT_MODEL, resolve_model
from fishersft.selection import select
from fishersft.selection.blocks import FeatureBlocks
from fishersft.selection.logdet import LogDetObjective

PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16}


@torch.inference_mode()
def bare_forward(model, encoded, batch_tokens: int, max_examples: int | None, dtype: torch.dtype | None) -> None:
    for batch in length_sorted_batches(lengths(encoded), batch_tokens, max_examples):
        ids, mask = pad_batch(encoded, batch, torch.device("cpu"))
        with autocast(torch.device("cpu"), dtype):
            model.base_model(input_ids=ids, attention_mask=mask)


def objective_on(features: torch.Tensor, offsets: torch.Tensor, indices: list[int]) -> float:
    objective = LogDetObjective(FeatureBlocks.of(features, offsets), lam=1.0)
    for i in indices:
        objective.add(i)
    return objective.value()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--data", type=Path, help="a JSONL dataset (default: chatterbot-corpus English)")
    parser.add_argument("--batch-tokens", type=int, default=default_batch_tokens("cpu"))
    parser.add_argument("--batch-size", type=int, help="examples per batch, with no token budget (the old embedder)")
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--budget", type=int, default=30, help="examples, for the agreement check")
    parser.add_argument("--budget-tokens", type=int, default=600, help="loss tokens, for the agreement check")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "embedding.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            data = Path(tmp) / "chatterbot-english.jsonl"
            corpora.write_jsonl(corpora.chatterbot(["english"]), data)
        model, tokenizer = load_model(resolve_model(args.model), torch.device("cpu"))
        dim = model.get_output_embeddings().weight.shape[1]
        examples = read_jsonl(data)
        encoded = encode_all(examples, tokenizer, args.max_length)
        loss_tokens = sum(len(e.targets) for e in encoded)
        all_tokens = sum(len(e.input_ids) for e in encoded)
        stores = {}
        # --batch-size alone: batches of that many examples, whatever their tokens
        batch_tokens, max_examples = (1 << 40, args.batch_size) if args.batch_size else (args.batch_tokens, None)
        batches = length_sorted_batches(lengths(encoded), batch_tokens, max_examples)
        padding = 1 - all_tokens / padded_tokens(lengths(encoded), batches)

        def embedder(precision: str) -> None:
            writer = FeatureStoreWriter(Path(tmp) / precision, dim, Compression(rank=args.max_length))  # every row
            writer.add(list(range(len(encoded))), [len(e.targets) for e in encoded])
            embed(model, encoded, writer, batch_tokens, dtype=PRECISIONS[precision], max_examples=max_examples)
            stores[precision] = writer.commit()

        runs = {}
        for precision, dtype in PRECISIONS.items():
            runs[f"embedder {precision}"] = lambda p=precision: embedder(p)
            runs[f"bare forward {precision}"] = lambda d=dtype: bare_forward(
                model, encoded, batch_tokens, max_examples, d
            )
        best = dict.fromkeys(runs, float("inf"))
        bare_forward(model, encoded[:64], batch_tokens, max_examples, None)  # warm up
        for _ in range(2):
            for name, fn in runs.items():
                start = time.perf_counter()
                fn()
                best[name] = min(best[name], time.perf_counter() - start)
        features = {p: load_features(stores[p]) for p in PRECISIONS}
        offsets = torch.from_numpy(features["float32"].offsets)
        exact = torch.from_numpy(np.asarray(features["float32"].features, dtype=np.float32))
        agreement = {}
        for budget in (Budget(examples=args.budget), Budget(tokens=args.budget_tokens)):
            picks = {
                p: select(torch.from_numpy(np.asarray(f.features, dtype=np.float32)), offsets, budget).indices
                for p, f in features.items()
            }
            agreement[json.dumps(budget.model_dump())] = {
                "overlap": len(set(picks["float32"]) & set(picks["bfloat16"])),
                "selected": {p: len(v) for p, v in picks.items()},
                "objective_on_float32_features": {p: objective_on(exact, offsets, v) for p, v in picks.items()},
            }
        deviation = np.abs(
            features["bfloat16"].features.astype(np.float32) - features["float32"].features.astype(np.float32)
        )
        scale = float(np.abs(features["float32"].features.astype(np.float32)).mean())
    report = {
        "model": args.model,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "examples": len(examples),
        "tokens": all_tokens,
        "loss_tokens": loss_tokens,
        "batch_size": args.batch_size,
        "batch_tokens": None if args.batch_size else args.batch_tokens,
        "batches": len(batches),
        "padding": padding,
        "seconds": best,
        "loss_tokens_per_s": {name: loss_tokens / s for name, s in best.items()},
        "embedder_over_bare": {p: best[f"bare forward {p}"] / best[f"embedder {p}"] for p in PRECISIONS},
        "bfloat16_speedup": best["embedder float32"] / best["embedder bfloat16"],
        "bfloat16_feature_error": {"mean_abs": float(deviation.mean()), "mean_abs_feature": scale},
        "agreement": agreement,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"{args.model}, torch {torch.__version__}, {torch.get_num_threads()} threads; {len(examples)} examples, "
        f"{all_tokens:,} tokens, {loss_tokens:,} loss tokens, "
        + (f"batches of {args.batch_size} examples" if args.batch_size else f"batches of {args.batch_tokens:,} tokens")
        + f": {len(batches)} batches, padding {padding:.1%}"
    )
    for name, seconds in best.items():
        print(f"{name:>22}: {seconds:6.2f} s, {loss_tokens / seconds:7,.0f} loss tokens/s")
    for p, ratio in report["embedder_over_bare"].items():
        print(f"embedder / bare forward ({p}): {ratio:.2f}")
    print(f"bfloat16 autocast speed-up of the embedder: {report['bfloat16_speedup']:.2f}x")
    for budget, row in agreement.items():
        objective = row["objective_on_float32_features"]
        print(
            f"{budget}: {row['overlap']} of {row['selected']['float32']} ids in common; objective on float32 "
            f"features: float32 picks {objective['float32']:.2f}, bfloat16 picks {objective['bfloat16']:.2f}"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
