"""The trainer against hand-written references, and against itself interrupted."""

import copy
import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_worker import make_trainer, synthetic_examples

from tinyllm_lib import files
from tinyllm_lib.chat import IGNORE_INDEX, EncodedChat
from tinyllm_lib.config import PRESETS, LoRAConfig, TrainConfig
from tinyllm_lib.data import collate
from tinyllm_lib.evaluate import perplexity
from tinyllm_lib.lora import apply_lora
from tinyllm_lib.model import TinyLLM, lm_loss_sum
from tinyllm_lib.train import (
    Trainer,
    TrainingDiverged,
    accumulate_gradients,
    batch_nll_sum,
    lr_at,
    parameter_groups,
    train_step,
    trainable_parameters,
)

PAD = 0
WORKER = Path(__file__).with_name("train_worker.py")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One thread: faster for a tiny model, and the same float order as the worker process."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_model(seed: int = 0, dropout: float = 0.0) -> TinyLLM:
    torch.manual_seed(seed)
    config = dataclasses.replace(PRESETS["test"], dropout=dropout)
    return TinyLLM(config)


def run(model, train_examples, val_examples=(), out_dir=None, log_dir=None, **settings):
    config = TrainConfig(**{"batch_size": 4, "lr": 1e-3, "warmup_steps": 0, **settings})
    trainer = Trainer(
        model, train_examples, list(val_examples), config, PAD, out_dir=out_dir,
        log_dir=log_dir, device="cpu", progress=False,
    )
    return trainer, trainer.fit()


def weights(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def relative_error(grads: dict, reference: dict) -> float:
    return max(
        float((grads[n].double() - reference[n]).norm() / reference[n].norm()) for n in reference
    )


def reference_mean_nll(model, examples) -> torch.Tensor:
    """Mean NLL per label token in float64, one unpadded example at a time, written out."""
    total, tokens = torch.zeros((), dtype=torch.float64), 0
    for example in examples:
        logits = model(torch.tensor([example.input_ids]))[0].double()
        log_probs = logits.log_softmax(-1)
        for t in range(len(example) - 1):
            target = example.labels[t + 1]
            if target != IGNORE_INDEX:
                total = total - log_probs[t, target]
                tokens += 1
    return total / tokens


# ----- learning-rate schedule ----------------------------------------------------------


def test_lr_warms_up_linearly_then_follows_a_cosine_down_to_the_floor():
    config = TrainConfig(lr=1e-3, warmup_steps=4, min_lr_ratio=0.1)
    lrs = [lr_at(step, config, total_steps=13) for step in range(13)]
    assert lrs[:5] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3], rel=1e-12)
    # Cosine over steps 4..12: a quarter of the way, cos(pi/4); half-way, the mean.
    assert lrs[6] == pytest.approx(1e-4 + 9e-4 * (1 + math.sqrt(0.5)) / 2, rel=1e-12)
    assert lrs[8] == pytest.approx(5.5e-4, rel=1e-12)
    assert lrs[12] == pytest.approx(1e-4, rel=1e-12)
    assert all(a > b for a, b in zip(lrs[4:], lrs[5:], strict=False))


# ----- gradient accumulation -----------------------------------------------------------


def step_gradients(model, examples, batch_size) -> dict[str, torch.Tensor]:
    model.zero_grad()
    batches = [
        collate(examples[i : i + batch_size], PAD) for i in range(0, len(examples), batch_size)
    ]
    accumulate_gradients(model, batches)
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def test_accumulated_micro_batches_give_the_gradient_of_one_big_batch():
    model = make_model()
    examples = synthetic_examples(8, seed=5)  # lengths and label counts vary
    one_batch = step_gradients(model, examples, batch_size=8)
    four_micro = step_gradients(model, examples, batch_size=2)

    reference_model = copy.deepcopy(model).double()
    reference_model.zero_grad()
    reference_mean_nll(reference_model, examples).backward()
    reference = {n: p.grad for n, p in reference_model.named_parameters()}

    assert relative_error(one_batch, reference) < 1e-4  # float32 vs float64
    assert relative_error(four_micro, {n: g.double() for n, g in one_batch.items()}) < 1e-6

    # The tempting alternative, a mean per micro-batch averaged over micro-batches, is off.
    model.zero_grad()
    for i in range(0, 8, 2):
        batch = collate(examples[i : i + 2], PAD)
        nll_sum, count = lm_loss_sum(model(batch.input_ids), batch.labels)
        (nll_sum / count / 4).backward()
    per_micro_mean = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert relative_error(per_micro_mean, reference) > 1e-2


def test_steps_see_the_same_examples_whatever_the_micro_batch_size():
    examples = synthetic_examples(20, seed=6)  # 20 = 8 + 8 + a ragged step of 4
    results = []
    for batch_size, grad_accum in [(8, 1), (2, 4)]:
        model = make_model()
        _, result = run(model, examples, batch_size=batch_size, grad_accum=grad_accum, epochs=1)
        results.append((weights(model), [r.loss for r in result.history]))
    (w1, losses1), (w2, losses2) = results
    assert len(losses1) == 3
    assert losses2 == pytest.approx(losses1, rel=1e-6)
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=0, atol=1e-5)  # 1% of lr


def saved_activation_bytes(model, batch) -> int:
    """Bytes autograd keeps for backward during one forward pass."""
    total = 0

    def pack(tensor):
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        lm_loss_sum(model(batch.input_ids), batch.labels)
    return total


def test_gradient_checkpointing_gives_the_same_gradients_with_fewer_saved_activations():
    model = make_model()
    examples = synthetic_examples(8, seed=7)
    batch = collate(examples, PAD)
    plain = step_gradients(model, examples, batch_size=4)
    plain_bytes = saved_activation_bytes(model, batch)
    model.gradient_checkpointing = True
    checkpointed = step_gradients(model, examples, batch_size=4)
    checkpointed_bytes = saved_activation_bytes(model, batch)
    assert relative_error(checkpointed, {n: g.double() for n, g in plain.items()}) < 1e-6
    assert checkpointed_bytes < plain_bytes / 2


def test_the_trainer_turns_gradient_checkpointing_on_from_its_config():
    model = make_model()
    run(model, synthetic_examples(4, seed=8), batch_size=4, epochs=1,
        gradient_checkpointing=True)
    assert model.gradient_checkpointing


class MeanPerSequence:
    """An objective of another shape than token-mean NLL (as DPO's is per pair): the mean
    over sequences of each sequence's summed NLL."""

    def count(self, batch):
        return batch.input_ids.shape[0]

    def loss_sum(self, model, batch):
        return batch_nll_sum(model, batch.input_ids, batch.labels)


def test_train_step_minimises_the_objective_it_is_given():
    examples = synthetic_examples(6, seed=21)
    model = make_model()
    reference = copy.deepcopy(model)
    by_hand = sum(lm_loss_sum(reference(collate([e], PAD).input_ids), collate([e], PAD).labels)[0]
                  for e in examples) / len(examples)
    by_hand.backward()
    expected = {name: p.grad.clone() for name, p in reference.named_parameters()}

    seen = {}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the weights stay put
    optimizer.step = lambda: seen.update(  # look at the gradient the update would use
        {name: p.grad.clone() for name, p in model.named_parameters()})
    batches = [collate(examples[:4], PAD), collate(examples[4:], PAD)]
    loss, grad_norm = train_step(model, batches, optimizer, MeanPerSequence(),
                                 max_grad_norm=1e9)
    assert loss.count == 6 and loss.mean == pytest.approx(by_hand.item(), rel=1e-5)
    for name, grad in expected.items():
        torch.testing.assert_close(seen[name], grad, rtol=1e-4, atol=1e-6)
    assert all(p.grad is None for p in model.parameters())  # cleared after the update
    assert grad_norm == pytest.approx(
        float(torch.linalg.vector_norm(torch.stack([g.norm() for g in expected.values()]))),
        rel=1e-4)


def test_a_compiled_training_run_follows_the_eager_one():
    """``compile=True`` changes how a step runs, not what it computes (LoRA, varied lengths)."""
    examples = synthetic_examples(12, seed=9)
    histories = []
    for compiled in (False, True):
        model = make_model()
        torch.manual_seed(1)
        apply_lora(model, LoRAConfig(rank=4, alpha=8, target_modules="all-linear"))
        trainer, result = run(model, examples, batch_size=4, epochs=2, compile=compiled)
        assert (trainer.objective.nll_sum is batch_nll_sum) != compiled
        histories.append([record.loss for record in result.history])
    assert histories[0] == pytest.approx(histories[1], rel=1e-4)


# ----- optimizer, reproducibility, frozen parameters -------------------------------------


def test_weight_decay_applies_to_matrices_but_not_to_norm_gains():
    model = make_model()
    model.model.layers[0].mlp.up_proj.weight.requires_grad_(False)
    groups = parameter_groups(model, weight_decay=0.1)
    name_of = {id(p): name for name, p in model.named_parameters()}
    decayed = {name_of[id(p)] for p in groups[0]["params"]}
    not_decayed = {name_of[id(p)] for p in groups[1]["params"]}
    assert (groups[0]["weight_decay"], groups[1]["weight_decay"]) == (0.1, 0.0)
    assert not_decayed == {n for n in name_of.values() if n.endswith("norm.weight")}
    assert "model.embed_tokens.weight" in decayed
    assert "model.layers.0.self_attn.q_proj.weight" in decayed
    assert "model.layers.0.mlp.up_proj.weight" not in decayed | not_decayed  # frozen
    assert len(decayed) + len(not_decayed) == len(trainable_parameters(model))


def test_same_seed_same_weights_and_another_seed_differs():
    examples = synthetic_examples(12, seed=7)
    finals = []
    for seed in (1, 1, 2):
        model = make_model(dropout=0.1)
        run(model, examples, max_steps=4, seed=seed)
        finals.append(weights(model))
    assert_same_weights(finals[0], finals[1])
    assert not torch.equal(finals[0]["model.norm.weight"], finals[2]["model.norm.weight"])


def test_lora_trains_and_saves_only_the_adapter_matrices(tmp_path):
    model = make_model()
    apply_lora(model, LoRAConfig(rank=4, dropout=0.1, target_modules=("q_proj", "down_proj")))
    trainable = set(trainable_parameters(model))
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    before = weights(model)
    trainer, _ = run(model, synthetic_examples(8, seed=8), out_dir=tmp_path, max_steps=2,
                     save_every=2)
    after = weights(model)
    for name in before:  # B starts at zero, so after two steps every adapter matrix moved
        assert torch.equal(before[name], after[name]) == (name not in trainable), name
    assert set(load_file(tmp_path / "checkpoint" / "trainable.safetensors")) == trainable
    optimized = sum(len(group["params"]) for group in trainer.optimizer.param_groups)
    assert optimized == len(trainable)


def test_bf16_autocast_trains_with_a_loss_close_to_float32():
    examples = synthetic_examples(4, seed=9)
    losses = []
    for bf16 in (False, True):
        model = make_model()
        _, result = run(model, examples, max_steps=1, bf16=bf16)
        losses.append(result.history[0].loss)
    assert math.isfinite(losses[1])
    assert losses[1] == pytest.approx(losses[0], rel=2e-2)


# ----- validation and early stopping -----------------------------------------------------


def constant_answer(count: int, answer: int, seed: int) -> list[EncodedChat]:
    """Random prompts whose every label is ``answer``."""
    return [
        EncodedChat(e.input_ids, [IGNORE_INDEX] + [answer] * (len(e) - 1))
        for e in synthetic_examples(count, seed)
    ]


def test_early_stopping_stops_after_patience_and_restores_the_best_weights(tmp_path):
    # Training teaches "answer 5"; validation wants 7, so it gets worse after the first step.
    train_set, val_set = constant_answer(8, 5, seed=11), constant_answer(4, 7, seed=12)
    model = make_model()
    trainer, result = run(model, train_set, val_set, log_dir=tmp_path, lr=1e-2, eval_every=1,
                          patience=2, epochs=10)
    assert result.stopped_early and result.restored_best
    assert (result.steps, result.best_step) == (3, 1)
    val_losses = [r.val_loss for r in result.history]
    assert val_losses[0] < val_losses[1] < val_losses[2]
    assert result.best_val_loss == val_losses[0]

    one_step = make_model()
    run(one_step, train_set, max_steps=1, lr=1e-2)
    assert_same_weights(weights(model), weights(one_step))
    assert math.log(perplexity(model, val_set)) == pytest.approx(val_losses[0], rel=1e-6)

    lines = (tmp_path / "train.jsonl").read_text().splitlines()
    logged = [json.loads(line) for line in lines]
    assert [r["step"] for r in logged] == [1, 2, 3]
    assert logged[1]["val_loss"] == pytest.approx(val_losses[1])
    assert set(logged[0]) == {"step", "epoch", "loss", "lr", "grad_norm", "tokens_per_s",
                              "val_loss", "metrics"}
    assert logged[0]["metrics"] == {}  # next-token prediction measures nothing more
    assert logged[0]["epoch"] == pytest.approx(1 / trainer.steps_per_epoch)


# ----- divergence ------------------------------------------------------------------------


def test_an_infinite_loss_stops_training_without_applying_the_step(tmp_path):
    model = make_model()
    calls = 0

    def poison_fifth_forward(module, inputs, output):
        nonlocal calls
        calls += 1
        return output * math.inf if calls == 5 else None

    model.lm_head.register_forward_hook(poison_fifth_forward)
    with pytest.raises(TrainingDiverged, match=r"step 5: loss nan.*weights after step 4"):
        run(model, synthetic_examples(40, seed=13), out_dir=tmp_path, save_every=2)
    checkpoint = tmp_path / "checkpoint"
    info = json.loads((checkpoint / "trainer_state.json").read_text())
    assert info["trainer_state"]["step"] == 4
    saved = load_file(checkpoint / "trainable.safetensors")
    for name, param in model.named_parameters():
        assert torch.equal(param.detach(), saved[name]), name
        assert param.grad is None


# ----- checkpoints and resume ------------------------------------------------------------


@pytest.mark.parametrize("crash_while", ["writing files", "renaming"])
def test_a_crash_while_checkpointing_keeps_the_previous_checkpoint(
    tmp_path, monkeypatch, crash_while
):
    examples = synthetic_examples(12, seed=14)
    out = tmp_path / "out"
    if crash_while == "writing files":
        write = files._write_synced

        def crash(path, data):  # the second checkpoint dies after its first file
            if (out / "checkpoint").exists() and path.name == "optimizer.pt":
                raise OSError("simulated crash")
            write(path, data)

        monkeypatch.setattr(files, "_write_synced", crash)
    else:
        rename = os.replace

        def crash(src, dst):  # the old checkpoint is moved aside, the new one not yet in
            if Path(src).name == "checkpoint.tmp" and (out / "checkpoint.old").exists():
                raise OSError("simulated crash")
            rename(src, dst)

        monkeypatch.setattr(files.os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        run(make_model(), examples, out_dir=out, max_steps=3, save_every=1)
    monkeypatch.undo()

    resumed_model = make_model()
    config = TrainConfig(batch_size=4, lr=1e-3, warmup_steps=0, max_steps=3, save_every=1)
    trainer = Trainer(resumed_model, examples, [], config, PAD, out, device="cpu",
                      progress=False)
    trainer.load_checkpoint()
    assert trainer.state.step == 1
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint"]
    trainer.fit(resume=True)

    uninterrupted = make_model()
    run(uninterrupted, examples, max_steps=3)
    assert_same_weights(weights(resumed_model), weights(uninterrupted))


@pytest.mark.parametrize("objective", ["nll", "dpo"])
def test_sigkill_then_resume_ends_with_the_weights_of_an_uninterrupted_run(tmp_path, objective):
    dpo = objective == "dpo"
    killed_dir = tmp_path / "killed"
    worker = subprocess.Popen(
        [sys.executable, str(WORKER), str(killed_dir), objective], stderr=subprocess.PIPE
    )
    log = killed_dir / "run.jsonl"
    deadline = time.monotonic() + 60
    # Kill once step 7 is logged: the last checkpoint is step 6, and step 8 is under way.
    while not log.exists() or log.read_text().count("\n") < 7:
        if worker.poll() is not None:
            pytest.fail(f"worker exited early: {worker.stderr.read().decode()}")
        assert time.monotonic() < deadline, "worker too slow"
        time.sleep(0.005)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    assert worker.returncode == -signal.SIGKILL

    resumed = make_trainer(killed_dir, dpo=dpo)
    resumed_result = resumed.fit(resume=True)
    reference = make_trainer(tmp_path / "reference", dpo=dpo)
    reference_result = reference.fit()

    assert resumed_result.steps == reference_result.steps == 18
    assert_same_weights(weights(resumed.model), weights(reference.model))
    for group, ref_group in zip(
        resumed.optimizer.param_groups, reference.optimizer.param_groups, strict=True
    ):
        for p, ref_p in zip(group["params"], ref_group["params"], strict=True):
            for key in ("exp_avg", "exp_avg_sq"):
                assert torch.equal(resumed.optimizer.state[p][key],
                                   reference.optimizer.state[ref_p][key])
    assert [(r.loss, r.val_loss, r.metrics) for r in resumed_result.history] == [
        (r.loss, r.val_loss, r.metrics) for r in reference_result.history
    ]
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["step"] for r in logged] == list(range(1, 19))


def test_resume_refuses_different_data_and_fresh_runs_refuse_to_overwrite(tmp_path):
    examples = synthetic_examples(8, seed=15)
    run(make_model(), examples, out_dir=tmp_path, max_steps=2, save_every=2)
    with pytest.raises(FileExistsError, match="checkpoint exists"):
        run(make_model(), examples, out_dir=tmp_path, max_steps=2, save_every=2)
    with pytest.raises(ValueError, match="num_examples 8 -> 7"):
        config = TrainConfig(batch_size=4, max_steps=4, save_every=2)
        Trainer(make_model(), examples[:7], [], config, PAD, tmp_path, device="cpu",
                progress=False).fit(resume=True)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Trainer(make_model(), examples, [], TrainConfig(), PAD, tmp_path / "none",
                device="cpu", progress=False).fit(resume=True)


def test_bad_examples_and_settings_are_named():
    good = synthetic_examples(3, seed=16)
    no_labels = EncodedChat([1, 2, 3], [IGNORE_INDEX] * 3)
    with pytest.raises(ValueError, match="train example 1: no label tokens"):
        Trainer(make_model(), [good[0], no_labels], [], TrainConfig(), PAD, device="cpu")
    with pytest.raises(ValueError, match="TrainConfig: patience needs validation examples"):
        Trainer(make_model(), good, [], TrainConfig(patience=2), PAD, device="cpu")
    with pytest.raises(ValueError, match="TrainConfig: save_every needs an out_dir"):
        Trainer(make_model(), good, [], TrainConfig(save_every=2), PAD, device="cpu")

