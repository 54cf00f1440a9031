"""LoRA fine-tuning on the loss tokens: it learns a learnable task, and its adapter round-trips through peft."""

import json
import random

import pytest
import torch
from peft import PeftModel

from fishersft.contract.training import LoraConfig, TrainingConfig
from fishersft.data.dataset import read_examples
from fishersft.data.encoding import encode_all
from fishersft.data.holdout import holdout
from fishersft.models.loading import load_model
from fishersft.training.lora import (
    example_losses,
    mean_loss,
    save_adapter,
    shuffled_batches,
    train_lora,
    training_plan,
)

WORDS = ["red", "green", "blue", "cat", "dog", "fish", "one", "two", "three", "sun", "moon", "star"]


def task(n: int, seed: int) -> list[str]:
    """Prompt: a few random words; response: the same words reversed. Learnable, and checkable on new prompts."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = rng.sample(WORDS, 3)
        rows.append(
            json.dumps({"id": f"{seed}-{i}", "prompt": " ".join(words) + " =", "response": " ".join(words[::-1])})
        )
    return rows


@pytest.fixture
def tiny(llama_dir):
    model, tokenizer = load_model(llama_dir, torch.device("cpu"))
    return model, tokenizer


def encoded(rows, tokenizer):
    return encode_all(read_examples(rows), tokenizer, 64)


@pytest.mark.slow  # LoRA training
def test_training_lowers_the_held_out_loss_and_reports_its_curve(tiny, llama_dir):
    """The tiny model is random: its frozen LM head is the bottleneck, so the LoRA modules include it."""
    model, tokenizer = tiny
    train, held = encoded(task(96, seed=1), tokenizer), encoded(task(32, seed=2), tokenizer)
    steps = []
    settings = TrainingConfig(epochs=10, learning_rate=2e-2, batch_size=16, precision="float32")
    trained = train_lora(
        model,
        train,
        LoraConfig(r=8, alpha=16, dropout=0.0, target_modules=["q_proj", "v_proj", "lm_head"]),
        settings,
        evaluate=lambda m: mean_loss(m, held),
        eval_points=3,
        on_step=lambda step, total, loss: steps.append((step, total, loss)),
    )
    assert trained.steps == len(training_plan(train, settings)) == 60 == len(trained.train_loss) == len(steps)
    assert [s[0] for s in steps] == list(range(1, 61)) and {s[1] for s in steps} == {60}
    assert [step for step, _ in trained.eval_loss] == [20, 40, 60]
    before, after = mean_loss(load_model(llama_dir, torch.device("cpu"))[0], held), trained.eval_loss[-1][1]
    assert after < 0.5 * before, trained.eval_loss
    assert after == pytest.approx(mean_loss(trained.model.get_base_model(), held), rel=1e-5)
    assert sum(trained.train_loss[-6:]) < sum(trained.train_loss[:6])
    per_example = example_losses(trained.model.get_base_model(), held)
    assert float(per_example.sum()) / sum(len(e.targets) for e in held) == pytest.approx(after, rel=1e-9)
    assert per_example.shape == (32,) and bool((per_example > 0).all())


@pytest.mark.slow  # LoRA training
def test_max_steps_stops_within_an_epoch(tiny):
    model, tokenizer = tiny
    trained = train_lora(model, encoded(task(40, seed=3), tokenizer), settings=TrainingConfig(epochs=5, max_steps=3))
    assert trained.steps == 3 and len(trained.train_loss) == 3 and trained.eval_loss == []


@pytest.mark.slow  # LoRA training
def test_the_adapter_round_trips_through_peft(tiny, llama_dir, tmp_path):
    model, tokenizer = tiny
    trained = train_lora(
        model, encoded(task(32, seed=4), tokenizer), settings=TrainingConfig(epochs=2, learning_rate=1e-2)
    )
    out = save_adapter(trained.model, tokenizer, tmp_path / "adapter", card="# card\n")
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "README.md"} <= {
        p.name for p in out.iterdir()
    }
    ids = torch.tensor([tokenizer.encode("red cat one =")])
    trained.model.eval()
    with torch.no_grad():
        expected = trained.model(input_ids=ids).logits
        base, _ = load_model(llama_dir, torch.device("cpu"))
        plain = base(input_ids=ids).logits
        loaded = PeftModel.from_pretrained(base, out).eval()
        got = loaded(input_ids=ids).logits
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(plain, expected)  # the adapter changed the model


def test_batches_cover_every_example_once_per_epoch_grouped_by_length(tiny):
    _, tokenizer = tiny
    examples = encoded(task(50, seed=5), tokenizer)
    batches = shuffled_batches(examples, 8, torch.Generator().manual_seed(0))
    assert sorted(i for b in batches for i in b) == list(range(50))
    again = shuffled_batches(examples, 8, torch.Generator().manual_seed(0))
    assert batches == again and batches != shuffled_batches(examples, 8, torch.Generator().manual_seed(1))


def test_holdout_is_stratified_seeded_and_bounded():
    groups = ["a"] * 50 + ["b"] * 30 + ["c"] * 3 + [None] * 20
    held = holdout(groups, 0.1, seed=0)
    assert held == holdout(groups, 0.1, seed=0) != holdout(groups, 0.1, seed=1)
    counts = {g: sum(groups[i] == g for i in held) for g in ("a", "b", "c", None)}
    assert counts == {"a": 5, "b": 3, "c": 0, None: 2}
    for bad in (0, 1, -0.5):
        with pytest.raises(ValueError, match="fraction"):
            holdout(groups, bad)
