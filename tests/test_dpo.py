"""DPO: the losses against their formulas in float64, the data, the reference, a trained step."""

import json
import math

import pytest
import torch
from train_worker import synthetic_pairs

from tinyllm_lib.chat import encode_chat
from tinyllm_lib.config import PRESETS, DPOConfig, LoRAConfig, TrainConfig
from tinyllm_lib.data import DatasetError
from tinyllm_lib.dpo import (
    METRICS,
    DPOObjective,
    PreferencePair,
    collate_pairs,
    dpo_loss,
    encode_pair,
    encode_pairs,
    load_preferences,
    precompute_reference,
    sequence_logps,
    write_preferences,
)
from tinyllm_lib.lora import apply_lora, disable_adapters, lora_layers, merge_and_unload
from tinyllm_lib.model import IGNORE_INDEX, TinyLLM
from tinyllm_lib.tokenizer import Tokenizer
from tinyllm_lib.train import Trainer, accumulate_gradients, train_step


def tiny_lora_model(seed: int = 0) -> TinyLLM:
    torch.manual_seed(seed)
    model = TinyLLM(PRESETS["test"])
    apply_lora(model, LoRAConfig(rank=4, target_modules="all-linear"))
    for _, layer in lora_layers(model):  # B = 0 would make policy == reference exactly
        torch.nn.init.normal_(layer.lora_B.weight, std=0.05)
    return model


# ------------------------------------------------------------------ the losses, in float64


def reference_losses(pc, pr, rc, rr, beta, loss_type, ls):
    """The three losses written out per pair with Python floats (float64)."""
    out = []
    for a, b, c, d in zip(pc, pr, rc, rr, strict=True):
        h = (a - c) - (b - d)
        if loss_type == "sigmoid":
            def log_sigmoid(x):
                return -math.log1p(math.exp(-x))
            out.append(-(1 - ls) * log_sigmoid(beta * h) - ls * log_sigmoid(-beta * h))
        elif loss_type == "ipo":
            out.append((h - 1 / (2 * beta)) ** 2)
        else:
            out.append(max(0.0, 1 - beta * h))
    return out


@pytest.mark.parametrize(("loss_type", "ls"), [("sigmoid", 0.0), ("sigmoid", 0.2),
                                               ("ipo", 0.0), ("hinge", 0.0)])
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_loss_equals_its_formula_in_float64(loss_type, ls, beta):
    generator = torch.Generator().manual_seed(3)
    logps = [-20 * torch.rand(16, generator=generator, dtype=torch.float64) for _ in range(4)]
    losses, chosen, rejected = dpo_loss(*logps, beta=beta, loss_type=loss_type,
                                        label_smoothing=ls)
    expected = reference_losses(*(t.tolist() for t in logps), beta, loss_type, ls)
    assert losses.tolist() == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert chosen.tolist() == pytest.approx((beta * (logps[0] - logps[2])).tolist(), rel=1e-12)
    assert rejected.tolist() == pytest.approx((beta * (logps[1] - logps[3])).tolist(),
                                              rel=1e-12)
    assert not chosen.requires_grad


def test_dpo_loss_refuses_bad_settings():
    zero = torch.zeros(2)
    with pytest.raises(ValueError, match="loss_type must be one of"):
        dpo_loss(zero, zero, zero, zero, loss_type="kto")
    with pytest.raises(ValueError, match="label_smoothing is cDPO's"):
        dpo_loss(zero, zero, zero, zero, loss_type="ipo", label_smoothing=0.1)
    with pytest.raises(ValueError, match="beta must be > 0"):
        dpo_loss(zero, zero, zero, zero, beta=0)


def test_sequence_logps_sums_the_label_tokens_log_probabilities():
    model = tiny_lora_model().double()
    pairs = synthetic_pairs(3, seed=5)
    batch = collate_pairs(pairs, pad_id=0)
    got = sequence_logps(model, batch.input_ids, batch.labels)
    mean = sequence_logps(model, batch.input_ids, batch.labels, average=True)
    logits = model(batch.input_ids)
    for row in range(batch.input_ids.shape[0]):
        labels = batch.labels[row].tolist()
        terms = [torch.log_softmax(logits[row, t - 1], -1)[labels[t]].item()
                 for t in range(1, len(labels)) if labels[t] != IGNORE_INDEX]
        assert got[row].item() == pytest.approx(sum(terms), rel=1e-12)
        assert mean[row].item() == pytest.approx(sum(terms) / len(terms), rel=1e-12)


@pytest.mark.parametrize("rpo_alpha", [0.0, 0.7])
def test_one_dpo_step_has_the_gradient_of_the_float64_loss(rpo_alpha):
    """The gradient ``train_step`` applies (accumulated over two micro-batches, float32)
    equals autograd of the loss written out in float64 over the whole step; with RPO, the
    loss adds ``rpo_alpha`` times each chosen reply's NLL per token."""
    pairs = synthetic_pairs(6, seed=11)
    model = tiny_lora_model()
    reference = tiny_lora_model().double()
    objective = DPOObjective(DPOConfig(beta=0.3, rpo_alpha=rpo_alpha))
    batches = [collate_pairs(pairs[:4], 0), collate_pairs(pairs[4:], 0)]
    accumulate_gradients(model, batches, objective)
    whole = collate_pairs(pairs, 0)
    policy = sequence_logps(reference, whole.input_ids, whole.labels)
    with torch.no_grad(), disable_adapters(reference):
        ref = sequence_logps(reference, whole.input_ids, whole.labels)
    n = len(pairs)
    h = (policy[:n] - ref[:n]) - (policy[n:] - ref[n:])
    chosen_tokens = [sum(label != IGNORE_INDEX for label in pair.chosen.labels[1:])
                     for pair in pairs]
    nll = -policy[:n] / torch.tensor(chosen_tokens, dtype=torch.float64)
    (-torch.nn.functional.logsigmoid(0.3 * h) + rpo_alpha * nll).mean().backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    assert grads
    for name, p in reference.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(grads[name].double(), p.grad, rtol=2e-4, atol=1e-6)
    metrics = objective.step_metrics()
    assert set(metrics) == set(METRICS) and objective.step_metrics() == {}


# ---------------------------------------------------------------------- the reference


def test_at_the_start_the_policy_is_the_reference():
    """B = 0 (a fresh adapter): every reward is 0 and the sigmoid loss is log 2."""
    torch.manual_seed(0)
    model = TinyLLM(PRESETS["test"])
    apply_lora(model, LoRAConfig(rank=4))
    objective = DPOObjective()
    losses, chosen, rejected, *_ = objective.losses(model, collate_pairs(synthetic_pairs(4, 3), 0))
    assert torch.equal(chosen, torch.zeros(4)) and torch.equal(rejected, torch.zeros(4))
    assert losses.tolist() == pytest.approx([math.log(2)] * 4, rel=1e-6)


def test_precomputed_reference_gives_the_same_loss_and_gradient():
    pairs = synthetic_pairs(4, seed=8)
    on_the_fly, precomputed = tiny_lora_model(), tiny_lora_model()
    precompute_reference(precomputed, pairs)
    assert all(p.ref_logps is not None for p in pairs)
    for model, batch in ((on_the_fly, collate_pairs(synthetic_pairs(4, seed=8), 0)),
                         (precomputed, collate_pairs(pairs, 0))):
        DPOObjective().loss_sum(model, batch).backward()
    for (name, a), (_, b) in zip(on_the_fly.named_parameters(),
                                 precomputed.named_parameters(), strict=True):
        if a.requires_grad:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-8, msg=name)


def test_merge_and_unload_makes_the_sft_model_the_reference():
    """After merging an SFT adapter and applying a fresh one, switching the fresh one off
    gives the SFT model, not the base."""
    sft = tiny_lora_model(seed=1)
    ids = torch.randint(1, 320, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        sft_logits = sft(ids)
    merge_and_unload(sft)
    assert not lora_layers(sft)
    apply_lora(sft, LoRAConfig(rank=4))
    with torch.no_grad(), disable_adapters(sft):
        torch.testing.assert_close(sft(ids), sft_logits, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------- data and files


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.load("data/base/tokenizer.json")


def test_both_trl_shapes_load_and_only_the_reply_is_labelled(tmp_path, tokenizer):
    path = tmp_path / "prefs.jsonl"
    records = [
        {"prompt": "What is 2 + 3?", "chosen": "5", "rejected": "6"},
        {"prompt": [{"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello"},
                    {"role": "user", "content": "What is 2 + 3?"}],
         "chosen": [{"role": "assistant", "content": "5"}],
         "rejected": [{"role": "assistant", "content": "six"}]},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    pairs = load_preferences(path)
    assert pairs[0] == PreferencePair(({"role": "user", "content": "What is 2 + 3?"},), "5", "6")
    assert pairs[1].prompt[2]["content"] == "Hello" and pairs[1].rejected == "six"
    encoded = encode_pair(tokenizer, pairs[1], max_len=128)
    for reply, chat in (("5", encoded.chosen), ("six", encoded.rejected)):
        full = encode_chat(tokenizer, [*pairs[1].prompt, {"role": "assistant", "content": reply}])
        assert chat.input_ids == full.input_ids
        scored = [t for t in chat.labels if t != IGNORE_INDEX]
        assert scored == [*tokenizer.encode(reply), tokenizer.im_end_id]  # not "Hello"
    write_preferences(tmp_path / "again.jsonl", pairs)
    assert load_preferences(tmp_path / "again.jsonl") == pairs


@pytest.mark.parametrize(("record", "message"), [
    ({"prompt": "q", "chosen": "a"}, "line 1: missing field 'rejected'"),
    ({"prompt": "q", "chosen": "a", "rejected": "a"}, "line 1: 'chosen' and 'rejected' are"),
    ({"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
      "chosen": [{"role": "assistant", "content": "b"}],
      "rejected": [{"role": "assistant", "content": "c"}]},
     "line 1: field 'prompt': message 1: the prompt ends with an assistant turn"),
    ({"prompt": [{"role": "user", "content": "q"}], "chosen": "b",
      "rejected": [{"role": "assistant", "content": "c"}]},
     "line 1: field 'chosen' must be a list of one assistant message"),
    ({"prompt": [{"role": "user", "content": "q"}],
      "chosen": [{"role": "user", "content": "b"}],
      "rejected": [{"role": "assistant", "content": "c"}]},
     "line 1: field 'chosen': the reply's role must be 'assistant'"),
    ({"prompt": 3, "chosen": "b", "rejected": "c"}, "line 1: field 'prompt' must be a string"),
])
def test_bad_preference_records_name_file_line_and_field(tmp_path, record, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(record) + "\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=f"bad.jsonl: {message}"):
        load_preferences(path)


def test_a_pair_too_long_is_refused_by_index(tokenizer):
    pairs = [PreferencePair(({"role": "user", "content": "q"},), "yes", "no"),
             PreferencePair(({"role": "user", "content": "q"},), "a " * 100, "no")]
    with pytest.raises(ValueError, match=r"pair 1: the pair takes \d+ tokens, more than "
                                         "max_len=64"):
        encode_pairs(tokenizer, pairs, max_len=64)


# ------------------------------------------------------------------------- training


def test_dpo_trains_on_the_trainer_and_logs_trl_metrics(tmp_path):
    torch.manual_seed(0)
    model = TinyLLM(PRESETS["test"])
    apply_lora(model, LoRAConfig(rank=4, target_modules="all-linear"))
    config = TrainConfig(max_steps=12, batch_size=4, lr=1e-2, warmup_steps=0, eval_every=6)
    trainer = Trainer(model, synthetic_pairs(16, 1), synthetic_pairs(8, 2), config, pad_id=0,
                      log_dir=tmp_path, run_name="dpo", device="cpu", progress=False,
                      objective=DPOObjective(DPOConfig(beta=0.5)))
    result = trainer.fit()
    first, last = result.history[0], result.history[-1]
    assert first.loss == pytest.approx(math.log(2), rel=1e-5)  # a fresh adapter: policy == ref
    assert set(first.metrics) == set(METRICS)
    assert set(last.metrics) == set(METRICS) | {f"eval_{m}" for m in METRICS}
    assert last.loss < 0.3 and last.metrics["rewards/accuracies"] == 1.0
    assert last.metrics["rewards/margins"] > 1.0
    assert result.best_val_loss is not None
    logged = [json.loads(line) for line in (tmp_path / "dpo.jsonl").read_text().splitlines()]
    assert logged[-1]["metrics"]["eval_rewards/accuracies"] == last.metrics[
        "eval_rewards/accuracies"]


def test_full_fine_tuning_dpo_with_a_precomputed_reference():
    torch.manual_seed(0)
    model = TinyLLM(PRESETS["test"])
    pairs = synthetic_pairs(8, 4)
    with pytest.raises(ValueError, match="precompute_reference"):
        DPOObjective().loss_sum(model, collate_pairs(pairs, 0))
    precompute_reference(model, pairs)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    objective = DPOObjective()
    first, _ = train_step(model, [collate_pairs(pairs, 0)], optimizer, objective)
    second, _ = train_step(model, [collate_pairs(pairs, 0)], optimizer, objective)
    assert first.mean == pytest.approx(math.log(2), rel=1e-5) and second.mean < first.mean
