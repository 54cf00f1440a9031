"""Finetunes and comparisons through the service: a real Redis, a real RQ worker, a tiny Llama, a learnable task."""

import io
import random
import tarfile

import matplotlib.image
import pytest
import torch
from peft import PeftModel

from fishersft.data.dataset import read_jsonl
from fishersft.data.holdout import holdout
from fishersft.models.loading import load_model
from fishersft.training.evaluation import ids_sha256
from tests.conftest import write_jsonl

pytestmark = pytest.mark.slow  # LoRA training runs

WORDS = ["red", "green", "blue", "cat", "dog", "fish", "one", "two", "three", "sun", "moon", "star"]
LORA = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj", "lm_head"]}
TRAINING = {"epochs": 4, "learning_rate": 0.02, "batch_size": 8}


@pytest.fixture
def task(tmp_path):
    """Reverse three words; rows carry a `category` (the first word's group) for stratified held-out sets."""
    rng = random.Random(0)
    rows = []
    for i in range(60):
        words = rng.sample(WORDS, 3)
        rows.append(
            {
                "id": f"t{i}",
                "category": "colors" if words[0] in WORDS[:3] else "other",
                "prompt": " ".join(words) + " =",
                "response": " ".join(words[::-1]),
            }
        )
    return write_jsonl(tmp_path / "task.jsonl", rows)


def test_finetune_a_selection_then_load_its_adapter_with_peft(service, task, llama_dir, tmp_path):
    service.start_worker()
    dataset = service.upload(task)
    selection = service.wait(service.select(dataset_id=dataset["id"], budget={"examples": 30}, max_length=64)["id"])
    body = {"selection_id": selection["id"], "lora": LORA, "training": TRAINING, "eval": {"holdout_fraction": 0.25}}
    created = service.client.post("/v1/finetunes", json=body)
    assert created.status_code == 202, created.text
    job = created.json()
    assert created.headers["location"] == f"/v1/finetunes/{job['id']}" and job["id"].startswith("ft_")
    assert job["request"]["model"] == "tiny" and job["request"]["training"]["max_length"] == 64
    done = service.wait(job["id"])
    assert done["status"] == "succeeded", done
    result = done["result"]
    assert result["subset"]["size"] == 30 and result["subset"]["selection_id"] == selection["id"]
    assert result["subset"]["ids_sha256"] == ids_sha256(selection["result"]["selected"])
    assert result["steps"] == 4 * 4 and result["train_loss"][-1][0] == 16
    evaluation = result["eval"]
    assert evaluation["n_examples"] == 8  # a quarter of the 30 examples the selection did not take, per category
    assert evaluation["after"]["loss"] < evaluation["before"]["loss"]
    assert [point[0] for point in evaluation["curve"]] == [0, 4, 8, 12, 16]
    assert set(evaluation["after"]["by_group"]) <= {"colors", "other"}
    page = service.client.get(f"/v1/finetunes/{job['id']}/events").json()
    assert page["object"] == "list" and page["next_after"] is None
    events = page["data"]
    types = [e["type"] for e in events]
    assert types[0] == "started" and types[-2:] == ["saved", "succeeded"] and "step" in types
    assert [e["created_at"] for e in events] == sorted(e["created_at"] for e in events)
    assert done["progress"]["phase"] == "training" and done["progress"]["done"] == 16

    archive = service.client.get(result["adapter"]["url"])
    assert archive.status_code == 200 and archive.headers["content-type"] == "application/gzip"
    assert len(archive.content) == result["adapter"]["bytes"]
    with tarfile.open(fileobj=io.BytesIO(archive.content)) as tar:
        tar.extractall(tmp_path / "adapter", filter="data")
    names = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "README.md"} <= names
    card = (tmp_path / "adapter" / "README.md").read_text()
    assert dataset["sha256"] in card and "tiny" in card and selection["id"] in card
    base, tokenizer = load_model(llama_dir, torch.device("cpu"))
    ids = torch.tensor([tokenizer.encode("red cat one =")])
    with torch.no_grad():
        plain = base(input_ids=ids).logits
        adapted = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()(input_ids=ids).logits
    assert not torch.allclose(plain, adapted)
    listed = service.client.get("/v1/finetunes").json()["data"]
    assert [f["id"] for f in listed] == [job["id"]]


def test_select_then_train_in_one_job_never_selects_the_held_out_examples(service, task):
    service.start_worker()
    dataset = service.upload(task)
    body = {
        "dataset_id": dataset["id"],
        # everything selectable: the subset is exactly the non-held-out examples
        "selection": {"budget": {"examples": 1000}},
        "lora": LORA,
        "training": {**TRAINING, "epochs": 1, "max_length": 64},
        "eval": {"holdout_fraction": 0.2},
    }
    done = service.wait(service.client.post("/v1/finetunes", json=body).json()["id"])
    assert done["status"] == "succeeded", done
    examples = read_jsonl(task)
    held = set(holdout([e.labels["category"] for e in examples], 0.2))
    kept = [e.id for k, e in enumerate(examples) if k not in held]
    assert done["result"]["subset"]["size"] == 48 == len(kept)
    assert done["result"]["subset"]["ids_sha256"] == ids_sha256(kept)
    assert done["result"]["eval"]["n_examples"] == 12


def test_a_comparison_makes_its_table_and_plot(service, task):
    service.start_worker()
    dataset = service.upload(task)
    body = {
        "dataset_id": dataset["id"],
        "budget": {"examples": 8},
        "random_seeds": 2,
        "max_length": 64,
        "lora": LORA,
        "training": {**TRAINING, "epochs": 1},
        "eval": {"holdout_fraction": 0.2},
        "eval_points": 2,
        "weightings": ["tokens", "mean"],
    }
    created = service.client.post("/v1/comparisons", json=body)
    assert created.status_code == 202, created.text
    done = service.wait(created.json()["id"])
    assert done["status"] == "succeeded", done
    runs = done["result"]["runs"]
    assert [(r["method"], r["weighting"], r["seed"], r["budget_kind"], r["balanced_by"]) for r in runs] == [
        ("fisher", "tokens", None, "examples", None),
        ("fisher", "mean", None, "examples", None),
        ("random", None, 0, "examples", None),
        ("random", None, 1, "examples", None),
        ("random", None, 0, "examples", "category"),  # the rows carry the eval's stratify_by: balanced too
        ("random", None, 1, "examples", "category"),
        ("fisher", "tokens", None, "tokens", None),
        ("fisher", "mean", None, "tokens", None),
    ]
    assert all(r["examples"] == 8 for r in runs[:6])
    mean_tokens = round((runs[2]["loss_tokens"] + runs[3]["loss_tokens"]) / 2)  # the uniform random subsets'
    assert all(r["budget"] == {"tokens": mean_tokens} and r["loss_tokens"] <= mean_tokens for r in runs[6:])
    assert all(r["groups"]["field"] == "category" and r["groups"]["total"] == 2 for r in runs)
    assert all(r["length_ratio"] > 0 for r in runs)
    assert len({r["loss_before"] for r in runs}) == 1
    assert all(r["curve"][0] == [0, r["loss_before"]] and r["curve"][-1][0] == r["steps"] for r in runs)
    summary = done["result"]["summary"]
    assert set(summary) == {"examples", "tokens"}
    assert summary["tokens"]["fisher"] == {"tokens": runs[6]["loss_after"], "mean": runs[7]["loss_after"]}
    assert summary["examples"]["random"]["min"] == min(runs[2]["loss_after"], runs[3]["loss_after"])
    balanced = summary["examples"]["random_balanced"]
    assert balanced["min"] == min(runs[4]["loss_after"], runs[5]["loss_after"])
    stronger = "random-balanced" if balanced["mean"] < summary["examples"]["random"]["mean"] else "random"
    assert summary["examples"]["yardstick"] == summary["tokens"]["yardstick"] == stronger
    plot = service.client.get(done["result"]["plot_url"])
    assert plot.status_code == 200 and plot.headers["content-type"] == "image/png"
    image = matplotlib.image.imread(io.BytesIO(plot.content), format="png")
    assert image.shape[0] > 200 and image.shape[1] > 400


def test_a_comparison_with_a_target_holds_out_half_the_target_and_selects_from_the_whole_pool(service, task, tmp_path):
    service.start_worker()
    dataset = service.upload(task)
    target_rows = [
        {"id": f"g{i}", "category": "colors", "prompt": f"{w} {w} {w} =", "response": f"{w} {w} {w}"}
        for i, w in enumerate(WORDS[:3] * 2)
    ]
    target = service.upload(write_jsonl(tmp_path / "target.jsonl", target_rows))
    body = {
        "dataset_id": dataset["id"],
        "target_dataset_id": target["id"],
        "methods": ["similarity", "random"],
        "budget": {"examples": 60},  # the whole pool: nothing of the dataset is held out
        "random_seeds": 1,
        "max_length": 64,
        "lora": LORA,
        "training": {**TRAINING, "epochs": 1},
        "eval_points": 1,
    }
    created = service.client.post("/v1/comparisons", json=body)
    assert created.status_code == 202, created.text
    done = service.wait(created.json()["id"])
    assert done["status"] == "succeeded", done
    held_out = done["result"]["held_out"]
    assert (held_out["source"], held_out["fraction"], held_out["n_examples"]) == ("target", 0.5, 3)
    assert {r["examples"] for r in done["result"]["runs"] if r["budget_kind"] == "examples"} == {60}
    tiny = {**body, "target_dataset_id": service.upload(write_jsonl(tmp_path / "one.jsonl", target_rows[:1]))["id"]}
    refused = service.client.post("/v1/comparisons", json=tiny)
    assert refused.status_code == 422, refused.text
    assert "body.target_dataset_id" in [d["field"] for d in refused.json()["error"]["details"]]


def test_bad_training_settings_get_a_422_naming_the_field(service, task, tmp_path):
    dataset = service.upload(task)
    features = service.upload(_features_file(tmp_path))
    pending = service.select(dataset_id=dataset["id"], budget={"examples": 3})
    base = {"dataset_id": dataset["id"], "selection": {"budget": {"examples": 5}}}
    cases = [
        ({**base, "lora": {"r": 0}}, "body.lora.r"),
        ({**base, "training": {"learning_rate": 0}}, "body.training.learning_rate"),
        ({**base, "training": {"learning_rate": -1e-3}}, "body.training.learning_rate"),
        ({**base, "lora": {"target_modules": ["q_proj", "attn_nope"]}}, "body.lora.target_modules"),
        ({**base, "eval": {"holdout_fraction": 0}}, "body.eval.holdout_fraction"),
        ({**base, "eval": {"holdout_fraction": 1}}, "body.eval.holdout_fraction"),
        ({**base, "eval": {"holdout_fraction": 0.001}}, "body.eval.holdout_fraction"),
        ({**base, "eval": {"dataset_id": features["id"]}}, "body.eval.dataset_id"),
        ({"dataset_id": features["id"], "selection": {"budget": {"examples": 5}}}, "body.dataset_id"),
        ({**base, "selection": {"budget": {"examples": 5}, "group_by": "nope"}}, "body.selection.group_by"),
        ({**base, "budget": {"examples": 5}}, "body.budget"),  # the selection's options live in `selection`
        ({"dataset_id": dataset["id"]}, "body"),
        ({**base, "selection_id": pending["id"]}, "body"),
        ({"selection_id": pending["id"]}, "body.selection_id"),
    ]
    for body, field in cases:
        response = service.client.post("/v1/finetunes", json=body)
        assert response.status_code == 422, (body, response.text)
        assert field in [d["field"] for d in response.json()["error"]["details"]], (body, response.json())
    for body, field in (  # a body naming something that does not exist: 404, naming the field
        ({**base, "eval": {"dataset_id": "ds_nope"}}, "body.eval.dataset_id"),
        ({"selection_id": "sel_nope"}, "body.selection_id"),
    ):
        response = service.client.post("/v1/finetunes", json=body)
        assert response.status_code == 404, (body, response.text)
        assert field in [d["field"] for d in response.json()["error"]["details"]], (body, response.json())
    comparison = {"dataset_id": dataset["id"], "budget": {"examples": 5}}
    for extra, field in (
        ({"lora": {"target_modules": ["nope"]}}, "body.lora.target_modules"),
        ({"weightings": ["tokens", "tokens"]}, "body.weightings"),
        ({"weightings": []}, "body.weightings"),
        ({"weightings": ["words"]}, "body.weightings.0"),
    ):
        response = service.client.post("/v1/comparisons", json={**comparison, **extra})
        assert response.status_code == 422 and response.json()["error"]["details"][0]["field"] == field, extra
    assert service.client.get("/v1/finetunes/ft_nope").json()["error"]["code"] == "finetune_not_found"
    assert service.client.get("/v1/comparisons/cmp_nope/plot.png").status_code == 404


def test_cancel_a_running_finetune_and_idempotency(service, task):
    dataset = service.upload(task)
    body = {
        "dataset_id": dataset["id"],
        "selection": {"budget": {"examples": 40}},
        "lora": LORA,
        "training": {"epochs": 1000, "batch_size": 1, "max_length": 64},
    }
    first = service.client.post("/v1/finetunes", json=body, headers={"Idempotency-Key": "f1"}).json()
    again = service.client.post("/v1/finetunes", json=body, headers={"Idempotency-Key": "f1"}).json()
    assert first["id"] == again["id"] and first["status"] == "queued"
    assert service.client.get(f"/v1/finetunes/{first['id']}/adapter").json()["error"]["code"] == "not_ready"
    service.start_worker()
    running = service.wait(first["id"], until=("running",))
    while not (running["progress"] and running["progress"]["phase"] == "training"):
        assert running["status"] == "running", running
        running = service.client.get(f"/v1/finetunes/{first['id']}").json()
    assert service.client.post(f"/v1/finetunes/{first['id']}/cancel").status_code == 200
    ended = service.wait(first["id"])
    assert ended["status"] == "cancelled" and ended["result"] is None
    events = service.client.get(f"/v1/finetunes/{first['id']}/events").json()["data"]
    assert events[-1]["type"] == "cancelled"


def _features_file(tmp_path):
    import numpy as np

    path = tmp_path / "f.npz"
    np.savez(path, features=np.ones((6, 4), np.float32), offsets=np.array([0, 2, 4, 6]))
    return path
