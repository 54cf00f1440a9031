"""Batches cut by tokens: the budget holds, padding stays low, outputs do not depend on the batching, and
training by token budget still sees every example each epoch."""

import random

import numpy as np
import pytest
import torch

from fishersft.contract.compression import Compression
from fishersft.contract.training import TrainingConfig
from fishersft.data.dataset import read_examples
from fishersft.data.encoding import encode_all
from fishersft.features.embedding import BackgroundWrites
from fishersft.features.set import FeaturesError
from fishersft.features.store import FeatureStoreWriter
from fishersft.models.batching import MAX_PADDING, cut_by_tokens, length_sorted_batches, padded_tokens
from fishersft.models.forward import lengths
from fishersft.models.loading import load_model
from fishersft.pipeline import embed_dataset, score_difficulty
from fishersft.training.lora import example_losses, train_lora, training_plan
from tests.conftest import SAMPLE, write_jsonl


def mixed_lengths(n: int, seed: int) -> list[int]:
    """Mostly short examples with a long tail, shuffled: what chat datasets look like."""
    rng = random.Random(seed)
    return [rng.choice([rng.randint(2, 40), rng.randint(40, 300), rng.randint(300, 1200)]) for _ in range(n)]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(("budget", "max_examples"), [(256, None), (2048, None), (4096, 7)])
def test_batches_respect_the_budget_and_pad_less_than_unsorted(seed, budget, max_examples):
    sizes = mixed_lengths(500, seed)
    batches = length_sorted_batches(sizes, budget, max_examples)
    assert sorted(i for b in batches for i in b) == list(range(len(sizes)))  # each example once
    for batch, following in zip(batches, [*batches[1:], None], strict=True):
        cost = len(batch) * max(sizes[i] for i in batch)
        assert cost <= budget or len(batch) == 1  # an example over the budget goes alone
        assert max_examples is None or len(batch) <= max_examples
        assert sum(sizes[i] for i in batch) >= (1 - MAX_PADDING) * cost  # padding stays under 10%
        if following:  # cut only where the next example would break the budget, the count or the padding
            wider = max(sizes[i] for i in [*batch, following[0]])
            grown = sum(sizes[i] for i in [*batch, following[0]])
            assert (
                (len(batch) + 1) * wider > budget
                or len(batch) == max_examples
                or grown < (1 - MAX_PADDING) * (len(batch) + 1) * wider
            )
    unsorted = cut_by_tokens(range(len(sizes)), sizes, budget, max_examples)
    assert all(len(b) * max(sizes[i] for i in b) <= budget or len(b) == 1 for b in unsorted)
    sorted_padding = 1 - sum(sizes) / padded_tokens(sizes, batches)
    unsorted_padding = 1 - sum(sizes) / padded_tokens(sizes, unsorted)
    assert sorted_padding < min(0.1, unsorted_padding)


def test_token_batches_embed_what_one_example_at_a_time_does(llama_dir, tmp_path):
    rows = SAMPLE.read_text().splitlines()[:40]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    options = {"max_length": 48, "precision": "float32", "compression": Compression(rank=48)}
    one = embed_dataset(data, llama_dir, tmp_path / "one", batch_size=1, **options)
    packed = embed_dataset(data, llama_dir, tmp_path / "packed", batch_tokens=200, **options)
    assert one.padding == 0 < packed.padding < 0.1
    a, b = one.features, packed.features
    assert a.ids == b.ids and a.offsets.tolist() == b.offsets.tolist()
    rows_a, rows_b = a.read_rows(0, int(a.offsets[-1])), b.read_rows(0, int(b.offsets[-1]))
    np.testing.assert_allclose(rows_a.astype(np.float32), rows_b.astype(np.float32), atol=2e-3, rtol=2e-3)
    np.testing.assert_allclose(np.asarray(a.means, np.float32), np.asarray(b.means, np.float32), atol=2e-3, rtol=2e-3)
    np.testing.assert_allclose(a.losses, b.losses, rtol=1e-5)
    ifd_one = score_difficulty(data, llama_dir, tmp_path / "one", batch_size=1, precision="float32").ifd
    ifd_packed = score_difficulty(data, llama_dir, tmp_path / "packed", batch_tokens=200, precision="float32").ifd
    np.testing.assert_allclose(ifd_one, ifd_packed, rtol=1e-5)


def test_held_out_losses_do_not_depend_on_the_token_budget(llama_dir):
    model, tokenizer = load_model(llama_dir, torch.device("cpu"))
    encoded = encode_all(read_examples(SAMPLE.read_text().splitlines()[:30]), tokenizer, 48)
    alone = torch.stack([example_losses(model, [e])[0] for e in encoded])
    torch.testing.assert_close(example_losses(model, encoded, batch_tokens=150), alone, rtol=1e-5, atol=1e-6)


def test_training_by_token_budget_trains_on_every_example_each_epoch(llama_dir):
    model, tokenizer = load_model(llama_dir, torch.device("cpu"))
    encoded = encode_all(read_examples(SAMPLE.read_text().splitlines()), tokenizer, 64)
    sizes = lengths(encoded)
    settings = TrainingConfig(epochs=3, batch_size=64, batch_tokens=256, learning_rate=1e-3, precision="float32")
    plan = training_plan(encoded, settings)
    assert all(len(b) * max(sizes[i] for i in b) <= 256 or len(b) == 1 for b in plan)
    assert max(len(b) for b in plan) > settings.batch_size // 8  # batches of many short examples, not of 8
    epoch: list[int] = []
    epochs = 0
    for batch in plan:  # the plan is three epochs one after the other, each every example once
        epoch += batch
        if len(epoch) >= len(encoded):
            assert sorted(epoch) == list(range(len(encoded)))
            epoch, epochs = [], epochs + 1
    assert epochs == 3 and not epoch
    steps = []
    trained = train_lora(model, encoded, settings=settings, on_step=lambda s, t, loss: steps.append(s), on_step_every=4)
    assert trained.steps == len(plan) == len(trained.train_loss)
    assert steps == [s for s in range(1, len(plan) + 1) if s % 4 == 0 or s == len(plan)]
    assert all(np.isfinite(trained.train_loss))


def test_a_write_that_fails_is_raised_in_the_caller(tmp_path):
    writer = FeatureStoreWriter(tmp_path / "store", 4, Compression(rank=8))
    writer.add(["a", "b"], [2, 3])
    bad = torch.ones(3, 4)
    bad[1, 2] = 1e6  # beyond float16
    with pytest.raises(FeaturesError, match=r"example 1: .*float16"), BackgroundWrites(writer) as writes:
        writes.write([0, 1], (torch.ones(2, 4), bad))
    writer.abort()
