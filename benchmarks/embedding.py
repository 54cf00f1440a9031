"""Embedding throughput: the embedder against a bare forward pass of the same model on the same batches.

    python benchmarks/embedding.py [--examples 1500 --hidden 256 --layers 4 --batch-size 16]

A Llama-architecture model is built locally (no hub here) at a size a CPU runs in reasonable time; the data is
synthetic prompt/response pairs of 8 to 160 words. Reported in loss tokens per second:
- embedder: `embed()`, i.e. padding, the body's forward pass, the gather of the loss positions, float16
  conversion and the write to the memory-mapped features store;
- bare forward: the body's forward pass alone on the same padded, length-sorted batches (the floor);
- full LM forward: the whole causal LM with output_hidden_states, the obvious way to get the same vectors.
Each is run twice, alternating, and the faster run counts.
"""

import argparse
import random
import tempfile
import time
from pathlib import Path

import torch

from fishersft.dataset import Example
from fishersft.embedding import embed, length_sorted_batches, load_model, pad_batch
from fishersft.encoding import encode_all
from fishersft.features import FeatureStoreWriter
from fishersft.tiny_model import build_tiny_model

WORDS = [
    "model",
    "data",
    "token",
    "train",
    "loss",
    "answer",
    "question",
    "river",
    "city",
    "number",
    "write",
    "code",
    "list",
    "python",
    "function",
    "value",
    "learn",
    "fine",
    "tune",
    "select",
    "budget",
    "example",
    "prompt",
    "response",
    "topic",
    "cluster",
    "gradient",
    "matrix",
    "vector",
]


def synthetic_examples(n: int, seed: int = 0) -> list[Example]:
    rng = random.Random(seed)

    def sentence(k: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(k))

    return [
        Example(
            i, i + 1, "prompt_response", prompt=sentence(rng.randint(8, 160)), response=sentence(rng.randint(8, 160))
        )
        for i in range(n)
    ]


@torch.inference_mode()
def bare_forward(model, encoded, batch_size: int) -> None:
    for batch in length_sorted_batches(encoded, batch_size):
        ids, mask = pad_batch(encoded, batch, torch.device("cpu"))
        model.base_model(input_ids=ids, attention_mask=mask)


@torch.inference_mode()
def full_forward(model, encoded, batch_size: int) -> None:
    for batch in length_sorted_batches(encoded, batch_size):
        ids, mask = pad_batch(encoded, batch, torch.device("cpu"))
        model(input_ids=ids, attention_mask=mask, output_hidden_states=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=1500)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    examples = synthetic_examples(args.examples)
    with tempfile.TemporaryDirectory() as tmp:
        texts = [e.prompt + " " + e.response for e in examples]
        model_dir = build_tiny_model(
            Path(tmp) / "model",
            texts,
            hidden_size=args.hidden,
            layers=args.layers,
            vocab_size=args.vocab,
            max_positions=1024,
        )
        model, tokenizer = load_model(model_dir, torch.device("cpu"))
        start = time.perf_counter()
        encoded = encode_all(examples, tokenizer, max_length=1024)
        tokenize_s = time.perf_counter() - start
        loss_tokens = sum(len(e.targets) for e in encoded)
        all_tokens = sum(len(e.input_ids) for e in encoded)

        def embedder() -> None:
            writer = FeatureStoreWriter(
                Path(tmp) / "store", [len(e.targets) for e in encoded], args.hidden, list(range(len(encoded)))
            )
            embed(model, encoded, writer, args.batch_size)
            writer.commit()

        runs = {
            "embedder": embedder,
            "bare forward": lambda: bare_forward(model, encoded, args.batch_size),
            "full LM forward": lambda: full_forward(model, encoded, args.batch_size),
        }
        best = dict.fromkeys(runs, float("inf"))
        bare_forward(model, encoded[:64], args.batch_size)  # warm up
        for _ in range(2):
            for name, fn in runs.items():
                start = time.perf_counter()
                fn()
                best[name] = min(best[name], time.perf_counter() - start)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; Llama d={args.hidden}, {args.layers} "
        f"layers, vocab {len(tokenizer)}; {args.examples} examples, {all_tokens:,} tokens, {loss_tokens:,} loss "
        f"tokens, batch size {args.batch_size}; tokenization {tokenize_s:.1f} s"
    )
    for name, seconds in best.items():
        print(f"{name:>16}: {seconds:6.2f} s, {loss_tokens / seconds:9,.0f} loss tokens/s")
    print(f"embedder / bare forward throughput: {best['bare forward'] / best['embedder']:.2f}")


if __name__ == "__main__":
    main()
