"""The per-example scores: the embedder's loss and the IFD pass (method ifd alone pays for it) equal a plain
forward pass of the whole causal LM, survive shards, and a store written before them is not served as one that
has them."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from fishersft import pipeline
from fishersft.data.dataset import read_jsonl
from fishersft.data.encoding import encode_all, response_alone
from fishersft.features.files import load_features
from fishersft.features.set import IFD_FILE, LOSSES_FILE, STORE_VERSION
from fishersft.features.store import assemble_store
from fishersft.models.loading import load_model
from fishersft.pipeline import embed_dataset, score_difficulty
from tests.conftest import SAMPLE, write_jsonl

OPTIONS = {"max_length": 24, "batch_size": 4, "precision": "float32"}
PASS = {"batch_size": 4, "precision": "float32"}
"""The IFD pass's options: the max_length is the store's."""


def plain_mean_loss(model, ids: list[int], targets: np.ndarray) -> float:
    """Mean cross-entropy of the tokens after `targets`, from the logits of the whole model, unpadded."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    return F.cross_entropy(logits[targets], torch.tensor(ids)[targets + 1]).item()


def counting_loader(rows: list[int]):
    """load_model, counting the sequences the model's body runs over."""

    def load(path, device):
        model, tokenizer = load_model(path, device)
        model.base_model.register_forward_hook(
            lambda module, args, kwargs, out: rows.append(len(kwargs["input_ids"])), with_kwargs=True
        )
        return model, tokenizer

    return load


def chat(i: int, line: str) -> dict:
    row = json.loads(line)
    return {
        "messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": row["prompt"]},
            {"role": "assistant", "content": row["response"][:40]},
            {"role": "user", "content": f"And {i}?"},
            {"role": "assistant", "content": row["response"][40:] or "Yes."},
        ]
    }


@pytest.mark.parametrize("shape", ["prompt_response", "messages", "text"])
def test_scores_are_those_of_a_plain_forward_pass(shape, llama_dir, tmp_path):
    lines = SAMPLE.read_text().splitlines()[:23]
    if shape == "prompt_response":
        rows: list = [*lines[:-1], {"prompt": "", "response": "No prompt at all."}]
    elif shape == "messages":
        rows = [chat(i, line) for i, line in enumerate(lines)]
    else:
        rows = [{"text": (row := json.loads(line))["prompt"] + " " + row["response"]} for line in lines]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    passes: list[int] = []
    embedded = embed_dataset(data, llama_dir, tmp_path / "store", load=counting_loader(passes), **OPTIONS).features
    assert embedded.losses is not None and embedded.ifd is None and sum(passes) == len(rows)  # one pass, no IFD
    fs = score_difficulty(data, llama_dir, tmp_path / "store", load=counting_loader(passes), **PASS)
    assert load_features(tmp_path / "store").ifd.tolist() == fs.ifd.tolist()  # kept in the store
    model, tokenizer = load_model(llama_dir, torch.device("cpu"))
    assert tokenizer.chat_template is None  # chats use the built-in template: content + EOS is each turn's loss
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    examples = read_jsonl(data)
    encoded = encode_all(examples, tokenizer, OPTIONS["max_length"])
    assert fs.losses is not None and fs.ifd is not None
    assert fs.losses.dtype == fs.ifd.dtype == np.float64 and len(fs.losses) == len(fs.ifd) == len(rows)
    with_prompt = 0
    for i, (example, enc) in enumerate(zip(examples, encoded, strict=True)):
        loss = plain_mean_loss(model, enc.input_ids.tolist(), enc.targets)
        assert fs.losses[i] == pytest.approx(loss, abs=1e-4)
        # the response alone, built here from the text: the start token, then the loss tokens the encoding kept
        if shape == "prompt_response":
            response = [*tokenizer.encode(example.response, add_special_tokens=False), eos]
        else:
            turns = [m.content for m in example.messages if m.role == "assistant"] if shape == "messages" else []
            response = [t for text in turns for t in [*tokenizer.encode(text, add_special_tokens=False), eos]]
        alone = response_alone(example, enc, tokenizer)
        if shape == "text" or (shape == "prompt_response" and not example.prompt):
            assert alone is None and fs.ifd[i] == 1.0  # no prompt: IFD 1 by definition
            continue
        with_prompt += 1
        expected = [bos, *response[: len(enc.targets)]]  # a truncated response loses its end in context too
        assert alone is not None and alone.input_ids.tolist() == expected
        assert fs.ifd[i] == pytest.approx(loss / plain_mean_loss(model, expected, np.arange(len(expected) - 1)), 1e-4)
    assert any(e.truncated for e in encoded)
    assert with_prompt == {"prompt_response": len(rows) - 1, "messages": len(rows), "text": 0}[shape]
    assert sum(passes) == len(rows) + with_prompt  # a second pass over the examples with a prompt alone


def test_a_response_alone_starts_with_the_eos_without_a_bos(llama_dir):
    tokenizer = AutoTokenizer.from_pretrained(llama_dir)
    tokenizer.bos_token = None
    (example,) = read_jsonl(SAMPLE)[:1]
    (enc,) = encode_all([example], tokenizer, 64)
    alone = response_alone(example, enc, tokenizer)
    assert alone is not None and enc.input_ids[0] != tokenizer.eos_token_id
    assert alone.input_ids.tolist() == [tokenizer.eos_token_id, *enc.input_ids[enc.targets + 1].tolist()]
    assert alone.targets.tolist() == list(range(len(enc.targets)))  # every loss token is scored alone too


def test_shards_assembled_have_the_scores_of_one_pass(llama_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline.embedding, "ENCODE_CHUNK", 8)
    data = write_jsonl(tmp_path / "d.jsonl", SAMPLE.read_text().splitlines()[:23])
    single = embed_dataset(data, llama_dir, tmp_path / "single", **OPTIONS).features
    parts = [tmp_path / f"part-{a}" for a in (0, 8, 16)]
    for part, a in zip(parts, (0, 8, 16), strict=True):
        embed_dataset(data, llama_dir, part, examples=(a, min(a + 8, 23)), **OPTIONS)
    assemble_store(parts, tmp_path / "assembled")
    for store in ("single", "assembled"):
        score_difficulty(data, llama_dir, tmp_path / store, **PASS)
    for name in (LOSSES_FILE, IFD_FILE):
        assert (tmp_path / "assembled" / name).read_bytes() == (tmp_path / "single" / name).read_bytes(), name
    assembled = load_features(tmp_path / "assembled")
    assert assembled.ifd is not None and (assembled.ifd != 1).all()
    subset = assembled.subset([2, 9, 20])
    assert subset.losses is not None and subset.losses.tolist() == single.losses[[2, 9, 20]].tolist()


def test_a_store_written_before_scores_is_not_served_for_one(service):
    service.start_worker()
    dataset = service.upload(SAMPLE)
    body = {"dataset_id": dataset["id"], "budget": {"examples": 3}, "max_length": 64}
    assert service.wait(service.select(**body)["id"])["status"] == "succeeded"
    (store,) = (service.settings.data_dir / "features").iterdir()
    assert load_features(store).losses is not None
    # the same store as the embedder wrote it before scores: no scores, and a name without the store's version
    old = store.rename(store.with_name(store.name.replace(f"-v{STORE_VERSION}-", "-")))
    (old / LOSSES_FILE).unlink()
    assert load_features(old).losses is None and load_features(old).ifd is None
    again = service.wait(service.select(**body)["id"])
    assert again["status"] == "succeeded" and not again["result"]["features_cached"]
    assert load_features(store).losses is not None


def test_the_ifd_pass_runs_once_for_the_method_that_needs_it(service, tmp_path):
    service.start_worker()
    dataset = service.upload(SAMPLE)
    body = {"dataset_id": dataset["id"], "budget": {"examples": 3}, "max_length": 64}
    first = service.wait(service.select(**body)["id"])["result"]
    (store,) = (service.settings.data_dir / "features").iterdir()
    assert first["timings"]["score_s"] == 0 and not (store / IFD_FILE).exists()  # fisher: no IFD pass
    scored = service.wait(service.select(**body, method="ifd")["id"])
    assert scored["status"] == "succeeded", scored
    assert scored["result"]["features_cached"] and scored["result"]["timings"]["score_s"] > 0
    assert 'phase="scoring"' in service.client.get("/metrics").text  # the pass reports progress as its own phase
    ifd = load_features(store).ifd
    assert ifd is not None and np.isfinite(ifd).all()
    again = service.wait(service.select(**body, method="ifd")["id"])["result"]
    assert again["timings"]["score_s"] == 0 and again["selected"] == scored["result"]["selected"]


def test_the_ifd_pass_refuses_a_store_of_other_data(llama_dir, tmp_path):
    lines = SAMPLE.read_text().splitlines()
    embed_dataset(write_jsonl(tmp_path / "a.jsonl", lines[:6]), llama_dir, tmp_path / "store", **OPTIONS)
    with pytest.raises(ValueError, match="ids differ"):
        score_difficulty(write_jsonl(tmp_path / "b.jsonl", lines[6:12]), llama_dir, tmp_path / "store", **PASS)
