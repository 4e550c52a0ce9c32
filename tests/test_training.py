"""Student training: config errors, completion-only masking, a full tiny run with MLflow lineage, resume."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from training_factories import make_records, write_dataset_stage

from fitsense.config import ConfigError, load_params
from fitsense.errors import InputDataError, StageError
from fitsense.records import ChatMessage, DistillRecord
from fitsense.runs import RunContext, read_jsonl, write_jsonl


def _params(tmp_path: Path, model_dir: Path, **overrides):
    base = {
        "run.artifacts_dir": str(tmp_path / "artifacts"),
        "registry.tracking_uri": f"sqlite:///{tmp_path / 'mlruns.db'}",
        "registry.artifact_location": str(tmp_path / "mlartifacts"),
        "training.base_model": str(model_dir),
        "training.device": "cpu",
        "training.batch_size": 2,
        "training.max_steps": 4,
        "training.eval_steps": 2,
        "training.max_val_examples": 2,
        "training.learning_rate": 0.01,
    }
    base.update({k.replace("__", "."): v for k, v in overrides.items()})
    return load_params(None, base)


# --------------------------------------------------------------------------- config and input errors


def test_bad_lora_rank_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"training\.lora\.r"):
        load_params(None, {"training.lora.r": 0})


def test_unknown_training_key_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match=r"training\.lora_rank: unknown key"):
        load_params(None, {"training.lora_rank": 8})


def test_4bit_without_cuda_is_a_clear_error(tmp_path, tiny_model_dir):
    import torch

    from fitsense.training.hardware import plan_hardware
    from fitsense.training.train import train_student

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: 4bit is allowed")
    params = _params(tmp_path, tiny_model_dir, training__quantization="4bit", training__device="auto")
    with pytest.raises(ConfigError, match=r"training\.quantization: 4bit \(QLoRA\) needs a CUDA GPU"):
        plan_hardware(params.training)
    ctx = RunContext.create(params, "r")
    write_dataset_stage(ctx.stage_dir("dataset"), 2, 1)
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        train_student(ctx)
    assert not (ctx.run_dir / "training" / "adapter").exists()
    assert plan_hardware(_params(tmp_path, tiny_model_dir).training) == ("cpu", "none")


def test_missing_dataset_names_the_stage(tmp_path, tiny_model_dir):
    from fitsense.training.train import train_student

    ctx = RunContext.create(_params(tmp_path, tiny_model_dir), "nodata")
    with pytest.raises(FileNotFoundError, match=r"run the 'dataset' stage"):
        train_student(ctx)


def test_record_without_assistant_answer_is_named(tmp_path, tiny_model_dir):
    from fitsense.training.train import train_student

    ctx = RunContext.create(_params(tmp_path, tiny_model_dir), "bad")
    stage = ctx.stage_dir("dataset")
    write_dataset_stage(stage, 3, 1)
    records = read_jsonl(stage / "train.jsonl")
    records[1]["messages"] = records[1]["messages"][:2]  # system + user only
    write_jsonl(stage / "train.jsonl", records)
    with pytest.raises(InputDataError, match=rf"train\.jsonl: record {records[1]['query_id']}: messages must be"):
        train_student(ctx)


def test_failed_quality_gate_blocks_training(tmp_path, tiny_model_dir):
    from fitsense.runs import write_json
    from fitsense.training.train import train_student

    ctx = RunContext.create(_params(tmp_path, tiny_model_dir), "gated")
    write_dataset_stage(ctx.stage_dir("dataset"), 3, 1)
    write_json(ctx.stage_dir("quality") / "gate.json", {"passed": False, "failures": ["min_train_examples"]})
    with pytest.raises(StageError, match="data quality gate failed"):
        train_student(ctx)


# --------------------------------------------------------------------------- loss masking


def test_top_layers_limits_lora_to_the_last_decoder_layers(tmp_path, tiny_model_dir):
    from peft import get_peft_model

    from fitsense.training.hardware import load_base_for_training
    from fitsense.training.trainer import lora_config

    params = _params(tmp_path, tiny_model_dir, training__lora__top_layers=1)
    model = load_base_for_training(tiny_model_dir, "cpu", "none")
    n_layers = model.config.num_hidden_layers
    assert n_layers > 1
    peft_model = get_peft_model(model, lora_config(params.training, n_layers))
    adapted = {name.split(".layers.")[1].split(".")[0] for name, p in peft_model.named_parameters()
               if p.requires_grad and "lora_" in name}
    assert adapted == {str(n_layers - 1)}
    # more than the model has: every layer (params.yaml's 15 also fits a smaller model)
    every = lora_config(_params(tmp_path, tiny_model_dir, training__lora__top_layers=n_layers + 1).training, n_layers)
    assert every.layers_to_transform is None


def test_precision_auto_follows_the_hardware(monkeypatch):
    from fitsense.training import student

    assert student.resolve_precision("fp32", "cuda") == "fp32"
    assert student.resolve_precision("auto", "cuda") == "bf16"
    monkeypatch.setattr(student, "cpu_has_native_bf16", lambda: False)
    assert student.resolve_precision("auto", "cpu") == "fp32"
    monkeypatch.setattr(student, "cpu_has_native_bf16", lambda: True)
    assert student.resolve_precision("auto", "cpu") == "bf16"


def test_only_the_assistant_answer_is_in_the_loss(tmp_path, tiny_model_dir):
    """The collated batch labels every prompt token -100 and keeps the answer (and its end-of-turn) as targets."""
    from fitsense.training.data import to_prompt_completion
    from fitsense.training.hardware import load_base_for_training
    from fitsense.training.student import load_tokenizer
    from fitsense.training.trainer import build_trainer

    params = _params(tmp_path, tiny_model_dir)
    tokenizer = load_tokenizer(tiny_model_dir)
    records = make_records(3, seed=1)
    rows = to_prompt_completion(records, "mem")
    trainer = build_trainer(params, load_base_for_training(tiny_model_dir, "cpu", "none"), tokenizer, rows, [],
                            tmp_path / "ckpt", "cpu")
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    for i, rec in enumerate(records):
        prompt = [m.model_dump() for m in rec.messages[:-1]]
        prompt_len = len(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_dict=True)["input_ids"])
        ids, labels = batch["input_ids"][i], batch["labels"][i]
        n = int(batch["attention_mask"][i].sum())
        assert (labels[:prompt_len] == -100).all(), "a prompt token contributes to the loss"
        assert (labels[prompt_len:n] == ids[prompt_len:n]).all()
        assert (labels[n:] == -100).all(), "padding contributes to the loss"
        target = tokenizer.decode(ids[prompt_len:n])
        assert target.startswith(rec.messages[-1].content)
        assert "<|im_end|>" in target  # the student learns to stop
        assert "<|im_start|>user" not in target



def test_the_cpu_loss_skips_prompt_logits_and_equals_the_models_own_loss(tmp_path, tiny_model_dir):
    """completion_loss computes logits at answer positions only, yet gives the model's own loss and gradient."""
    import torch

    from fitsense.training.data import to_prompt_completion
    from fitsense.training.hardware import load_base_for_training
    from fitsense.training.student import load_tokenizer
    from fitsense.training.trainer import build_trainer, completion_loss

    params = _params(tmp_path, tiny_model_dir)
    tokenizer = load_tokenizer(tiny_model_dir)
    rows = to_prompt_completion(make_records(3, seed=2), "mem")
    trainer = build_trainer(params, load_base_for_training(tiny_model_dir, "cpu", "none"), tokenizer, rows, [],
                            tmp_path / "ckpt", "cpu")
    model = trainer.model
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    lora = [p for p in model.parameters() if p.requires_grad]
    with torch.no_grad():  # LoRA B starts at zero: give the adapter a gradient path through A too
        for p in lora:
            p.add_(torch.randn_like(p) * 0.02)

    def loss_and_grads(fn):
        model.zero_grad()
        loss = fn()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in lora]

    kept = {}
    original = model.forward

    def spy(*args, **kwargs):
        kept["logits_to_keep"] = kwargs.get("logits_to_keep")
        return original(*args, **kwargs)

    own, own_grads = loss_and_grads(lambda: model(**batch, use_cache=False).loss)
    model.forward = spy
    ours, our_grads = loss_and_grads(lambda: completion_loss(model, batch))
    model.forward = original
    n_items = int((batch["labels"][:, 1:] != -100).sum())
    summed, _ = loss_and_grads(lambda: completion_loss(model, batch, num_items_in_batch=2 * n_items))

    assert torch.allclose(ours, own, rtol=1e-5, atol=1e-6)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(our_grads, own_grads))
    assert torch.allclose(summed, own / 2, rtol=1e-5, atol=1e-6)  # a sum over the accumulated batch's tokens
    first_answer = int((batch["labels"] != -100).any(dim=0).nonzero().min())
    assert int(kept["logits_to_keep"].min()) == first_answer - 1  # no logits for the prompt before it
    assert len(kept["logits_to_keep"]) < batch["input_ids"].shape[1]


def test_group_by_length_batches_examples_of_similar_length(tmp_path, tiny_model_dir):
    """With training.group_by_length the train batches pad less than random ones, over the same examples."""
    from fitsense.training.data import to_prompt_completion
    from fitsense.training.hardware import load_base_for_training
    from fitsense.training.student import load_tokenizer
    from fitsense.training.trainer import build_trainer

    tokenizer = load_tokenizer(tiny_model_dir)
    records = make_records(40, seed=3)
    for i, rec in enumerate(records):  # lengths spread far apart, so random pairs pad a lot
        rec.messages[-2].content += " more detail" * (i % 10) * 20
    rows = to_prompt_completion(records, "mem")

    def padding_share(grouped: bool) -> float:
        params = _params(tmp_path, tiny_model_dir, training__group_by_length=grouped)
        trainer = build_trainer(params, load_base_for_training(tiny_model_dir, "cpu", "none"), tokenizer, rows, [],
                                tmp_path / f"ckpt-{grouped}", "cpu")
        assert trainer.args.train_sampling_strategy == ("group_by_length" if grouped else "random")
        padded = real = 0
        for batch in trainer.get_train_dataloader():
            padded += batch["attention_mask"].numel()
            real += int(batch["attention_mask"].sum())
        return 1 - real / padded

    assert padding_share(True) < padding_share(False) / 2

# --------------------------------------------------------------------------- a full tiny run


def test_training_writes_adapter_metrics_and_mlflow_lineage(tmp_path, tiny_model_dir):
    import mlflow

    from fitsense.training.student import load_student
    from fitsense.training.train import train_student

    params = _params(tmp_path, tiny_model_dir, training__merge_adapter=True, training__early_stopping_patience=0)
    ctx = RunContext.create(params, "tiny")
    info = write_dataset_stage(ctx.stage_dir("dataset"), 8, 3)
    summary = train_student(ctx)

    out = ctx.run_dir / "training"
    assert (out / "adapter" / "adapter_config.json").exists()
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    assert (out / "adapter" / "tokenizer.json").exists()
    assert (out / "merged" / "config.json").exists()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["val_examples"] == 2
    assert metrics["train_tokens"] > 0 and metrics["tokens_per_s"] > 0
    assert metrics["final_val_loss"] < metrics["base_val_loss"]  # lr 0.01 on a random tiny model: must move
    assert metrics["best_val_loss"] == min(metrics["best_val_loss"], metrics["final_val_loss"])
    with open(out / "loss.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [0, 1, 2, 3, 4]
    assert float(rows[0]["val_loss"]) == pytest.approx(metrics["base_val_loss"])
    assert all(r["train_loss"] for r in rows[1:]) and rows[2]["val_loss"] and rows[4]["val_loss"]
    student = json.loads((out / "student.json").read_text())
    assert student["dataset_run_id"] == info["dataset_run_id"]
    assert student["device"] == "cpu" and student["quantization"] == "none"
    first = read_jsonl(ctx.run_dir / "dataset" / "train.jsonl", DistillRecord)[0]
    assert student["system_prompt"] == first.messages[0].content  # the prompt serving adds when a client sends none
    assert student["mlflow_run_id"] == summary["mlflow_run_id"]
    assert ctx.manifest("training")["outputs"]["adapter"]["sha256"]

    mlflow.set_tracking_uri(params.registry.tracking_uri)
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(params.registry.experiment)
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [student["mlflow_run_id"]], "exactly one MLflow run per training"
    run = runs[0]
    assert run.data.tags["dataset_run_id"] == info["dataset_run_id"]
    assert run.data.tags["dataset_digest"] == info["digest"]
    assert run.data.params["training.lora.r"] == "16"
    contexts = {next(t.value for t in d.tags if t.key == "mlflow.data.context"): d.dataset
                for d in run.inputs.dataset_inputs}
    assert set(contexts) == {"training", "validation"}
    assert contexts["training"].name == f"{info['dataset_run_id']}-train"
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4], "each step logged once"
    assert {m.step for m in client.get_metric_history(run.info.run_id, "eval_loss")} >= {0, 2, 4}
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "adapter")}
    assert "adapter/adapter_model.safetensors" in artifacts
    # The safety screen is a training artifact: saved beside the adapter, named in student.json, logged to MLflow.
    assert (out / "screen" / "screen.json").exists() and student["screen_dir"] == str((out / "screen").resolve())
    assert "screen/screen.json" in {a.path for a in client.list_artifacts(run.info.run_id, "screen")}
    assert "screen/threshold" in run.data.metrics

    model, tokenizer = load_student(tiny_model_dir, out / "adapter", device="cpu")
    assert not model.training and tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    enc = tokenizer.apply_chat_template(
        [[ChatMessage(role="user", content="hi").model_dump()], [ChatMessage(role="user", content="a longer hello").model_dump()]],
        add_generation_prompt=True, return_tensors="pt", return_dict=True, padding=True)
    generated = model.generate(**enc, max_new_tokens=3, do_sample=False)
    assert generated.shape == (2, enc["input_ids"].shape[1] + 3)


def test_checkpoints_are_reused_only_for_the_same_unfinished_training(tmp_path):
    from fitsense.training.resume import RESUME_FILE, prepare_checkpoints

    ckpt = tmp_path / "checkpoints"

    def killed_run(record):
        (ckpt / "checkpoint-2").mkdir(parents=True, exist_ok=True)
        (ckpt / "checkpoint-2" / "trainer_state.json").write_text("{}")
        (ckpt / RESUME_FILE).write_text(json.dumps(record))

    killed_run({"key": "a", "mlflow_run_id": "m1"})
    last, record = prepare_checkpoints(ckpt, "a")
    assert last.endswith("checkpoint-2") and record["mlflow_run_id"] == "m1"
    last, record = prepare_checkpoints(ckpt, "b")  # other params/data/base model
    assert last is None and record == {"key": "b"} and not (ckpt / "checkpoint-2").exists()
    killed_run({"key": "a", "completed": True})
    assert prepare_checkpoints(ckpt, "a")[0] is None and not (ckpt / "checkpoint-2").exists()


def test_killed_run_resumes_from_last_checkpoint_in_the_same_mlflow_run(tmp_path, tiny_model_dir, monkeypatch):
    from fitsense.training import train as train_mod
    from fitsense.training.trainer import MlflowStepLogger

    params = _params(tmp_path, tiny_model_dir, training__batch_size=1, training__max_steps=4,
                     training__eval_steps=2, training__max_val_examples=1)
    ctx = RunContext.create(params, "resume")
    write_dataset_stage(ctx.stage_dir("dataset"), 4, 1)

    class Killed(Exception):
        pass

    original = MlflowStepLogger.on_log

    def die_at_step_3(self, args, state, control, logs=None, **kwargs):
        original(self, args, state, control, logs=logs, **kwargs)
        if state.global_step == 3:
            raise Killed()

    monkeypatch.setattr(MlflowStepLogger, "on_log", die_at_step_3)
    with pytest.raises(Killed):
        train_mod.train_student(ctx)
    ckpt = ctx.run_dir / "training" / "checkpoints"
    assert (ckpt / "checkpoint-2").exists() and not (ctx.run_dir / "training" / "adapter").exists()
    first_run_id = json.loads((ckpt / train_mod.RESUME_FILE).read_text())["mlflow_run_id"]

    monkeypatch.setattr(MlflowStepLogger, "on_log", original)
    summary = train_mod.train_student(ctx)
    metrics = json.loads((ctx.run_dir / "training" / "metrics.json").read_text())
    assert metrics["resumed_from_step"] == 2 and metrics["steps"] == 4
    assert summary["mlflow_run_id"] == first_run_id
    state = json.loads((ckpt / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2, 3, 4]

    # A rerun after the completed training (here with other params) trains afresh.
    ctx2 = RunContext.create(_params(tmp_path, tiny_model_dir, training__batch_size=1, training__max_steps=2,
                                     training__eval_steps=2, training__max_val_examples=1), "resume")
    assert train_mod.train_student(ctx2)["steps"] == 2
    assert json.loads((ctx.run_dir / "training" / "metrics.json").read_text())["resumed_from_step"] is None
