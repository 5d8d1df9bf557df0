"""4-bit quantization against bitsandbytes itself (its CPU backend), byte for byte."""

import json

import bitsandbytes.functional as bnbf
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tinyllm_lib.checkpoint import SMOLLM2, load_pretrained
from tinyllm_lib.config import BASE_DIR, LoRAConfig
from tinyllm_lib.lora import apply_lora, merge_lora
from tinyllm_lib.quant import (
    FP4_CODE,
    NF4_CODE,
    Linear4bit,
    bits_per_parameter,
    dequantize,
    dynamic_map,
    nf4_levels,
    quantize_4bit,
    quantize_model,
    quantize_nf4,
)


def random_weight(shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 0.02


def test_nf4_derivation_and_dynamic_map_are_bitsandbytes_tables():
    assert torch.equal(NF4_CODE, bnbf.get_4bit_type("nf4", device="cpu"))
    assert torch.equal(FP4_CODE, bnbf.get_4bit_type("fp4", device="cpu"))
    # measured: 1.9e-7 (bitsandbytes spaced the quantiles in float32)
    assert (nf4_levels() - NF4_CODE.double()).abs().max() < 3e-7
    assert torch.equal(dynamic_map(), bnbf.create_dynamic_map(signed=True))


def assert_same_as_bnb(w, blocksize, quant_type="nf4"):
    q = quantize_4bit(w, blocksize, double_quant=True, quant_type=quant_type)
    packed, state = bnbf.quantize_4bit(w, blocksize=blocksize, compress_statistics=True,
                                       quant_type=quant_type)
    assert torch.equal(q.packed, packed)
    assert torch.equal(q.absmax, state.absmax)
    assert torch.equal(q.offset, state.offset)
    assert torch.equal(q.nested_absmax, state.state2.absmax)
    assert torch.equal(q.nested_code, state.state2.code)
    ours = bnbf.QuantState(q.absmax, q.shape, q.code, blocksize, quant_type, q.dtype, q.offset,
                           bnbf.QuantState(q.nested_absmax, code=q.nested_code,
                                           blocksize=256, dtype=torch.float32))
    assert torch.equal(bnbf.dequantize_4bit(q.packed, ours), dequantize(q))


@pytest.mark.parametrize("shape, blocksize", [
    ((64, 256), 64), ((48, 128), 32), ((40, 512), 128), ((96, 4096), 4096), ((130, 64), 64)])
def test_nf4_bytes_statistics_and_dequantization_equal_bitsandbytes(shape, blocksize):
    assert_same_as_bnb(random_weight(shape), blocksize)


def test_fp4_equals_bitsandbytes():
    assert_same_as_bnb(random_weight((64, 256), seed=3), 64, "fp4")


def test_a_real_weight_of_the_shipped_base_equals_bitsandbytes():
    model, _ = load_pretrained(BASE_DIR, device="cpu")
    assert_same_as_bnb(model.model.layers[0].mlp.down_proj.weight.detach(), 64)


def test_bits_per_parameter_with_double_quant():
    w = random_weight((2048, 2048))  # its level tables included: 4.129 bits
    assert bits_per_parameter(quantize_nf4(w)) <= 4.13
    assert bits_per_parameter(quantize_nf4(w, double_quant=False)) > 4.5  # 32 bits per 64


def test_smollm2_linear_weights_cost_at_most_4_13_bits():
    """All 210 quantized linears of SmolLM2 together, measured from their tensors."""
    model, _ = load_pretrained(SMOLLM2, device="cpu")
    layers = [m.quantized() for m in quantize_model(model).modules()
              if isinstance(m, Linear4bit)]
    assert len(layers) == 210
    bits = bits_per_parameter(*layers)
    # 4 + 8/64 + 32/(64*256) = 4.1270 for the codes and statistics, plus a 32-bit mean
    # per layer and the shared tables once: measured 4.1271
    assert 4.127 < bits <= 4.13, bits


def test_nf4_beats_int4_on_normal_weights():
    w = random_weight((256, 256))
    error = {t: (dequantize(quantize_4bit(w, quant_type=t)) - w).pow(2).mean()
             for t in ("nf4", "fp4", "int4")}
    assert error["nf4"] < error["int4"]


@pytest.mark.parametrize("weight, blocksize, message", [
    (torch.zeros(4, 96), 64, r"proj.weight: blocksize 64 must divide the row length"),
    (torch.zeros(4, 64), 48, r"proj.weight: blocksize must be one of"),
    (torch.zeros(4, 64, dtype=torch.int64), 64, r"proj.weight: only a floating-point"),
    (torch.full((4, 64), float("nan")), 64, r"proj.weight: the tensor holds inf or nan"),
])
def test_bad_input_names_the_tensor(weight, blocksize, message):
    with pytest.raises(ValueError, match=message):
        quantize_nf4(weight, blocksize, name="proj.weight")


def make_layer():
    linear = nn.Linear(128, 32)
    with torch.no_grad():
        linear.weight.copy_(random_weight((32, 128), seed=5))
    return Linear4bit.from_linear(linear), linear


def test_linear4bit_forward_and_gradients_equal_the_dequantized_dense_layer():
    layer, linear = make_layer()
    dense = layer.dense_weight()
    x = torch.randn(3, 5, 128, requires_grad=True)
    out = layer(x)
    assert torch.equal(out, F.linear(x, dense, linear.bias))
    out.square().sum().backward()
    x_ref = x.detach().clone().requires_grad_(True)
    F.linear(x_ref, dense, linear.bias).square().sum().backward()
    assert torch.allclose(x.grad, x_ref.grad, atol=1e-6)
    assert not list(layer.parameters())  # no weight gradient: nothing to train


def test_qlora_gradients_equal_lora_on_the_dequantized_weight():
    layer, linear = make_layer()
    dense = nn.Linear(128, 32)
    with torch.no_grad():
        dense.weight.copy_(layer.dense_weight())
        dense.bias.copy_(linear.bias)
    models = [nn.Sequential(layer), nn.Sequential(dense)]
    for model in models:
        torch.manual_seed(0)
        apply_lora(model, LoRAConfig(target_modules="all-linear"))
        with torch.no_grad():
            model[0].lora_B.weight.fill_(0.01)
        model(torch.randn(4, 128, generator=torch.Generator().manual_seed(1))).sum().backward()
    for part in ("lora_A", "lora_B"):
        assert torch.allclose(getattr(models[0][0], part).weight.grad,
                              getattr(models[1][0], part).weight.grad, atol=1e-6)
    with pytest.raises(ValueError, match="merge into the full-precision base"):
        merge_lora(models[0])


def test_quantize_model_replaces_every_linear_but_lm_head():
    model, _ = load_pretrained(BASE_DIR, device="cpu")
    quantize_model(model)
    kinds = {name: type(m) for name, m in model.named_modules()}
    assert kinds["lm_head"] is nn.Linear
    assert kinds["model.layers.0.self_attn.q_proj"] is Linear4bit
    assert not any(k is nn.Linear for n, k in kinds.items() if n != "lm_head")


def test_peft_loads_a_qlora_adapter_on_the_full_precision_base(tmp_path):
    """A QLoRA adapter has the plain LoRA names (nothing 4-bit leaks into them), so PEFT
    puts it on the full-precision base and computes what ours does there."""
    import peft  # a test dependency (requirements.txt): a missing install fails
    from test_lora import randomize_b
    from test_peft_adapter import hf_llama

    from tinyllm_lib.formats.peft_adapter import load_adapter, save_adapter

    qlora, _ = load_pretrained(BASE_DIR, device="cpu")
    apply_lora(quantize_model(qlora), LoRAConfig(target_modules="all-linear"))
    randomize_b(qlora)
    save_adapter(qlora, tmp_path)
    full, _ = load_pretrained(BASE_DIR, device="cpu")
    peft_model = peft.PeftModel.from_pretrained(hf_llama(full), tmp_path).eval()
    load_adapter(full, tmp_path)
    ids = torch.randint(0, full.config.vocab_size, (2, 24),
                        generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs, on_4bit = full(ids), peft_model(ids).logits, qlora.eval()(ids)
    assert (theirs - ours).abs().max() < 1e-4
    # The 4-bit base is an approximation of the full one: close, not equal.
    assert 1e-3 < (on_4bit - ours).abs().max() < 2.0


def test_cli_train_qlora_writes_an_adapter_for_the_full_precision_base(tmp_path, monkeypatch):
    from tinyllm_lib.cli import main
    from tinyllm_lib.formats.peft_adapter import load_adapter

    monkeypatch.chdir(tmp_path)  # the CLI's outputs/ (logs) land here
    rows = [{"messages": [{"role": "user", "content": "Where does Ada Lane live?"},
                          {"role": "assistant", "content": "Stonebridge"}]}] * 4
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "qlora"
    assert main(["train", "--qlora", "--gradient-checkpointing", "--data", str(data),
                 "--val", str(data), "--max-steps", "2", "--batch-size", "2",
                 "--out", str(out)]) == 0
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert len(config["target_modules"]) == 7  # --qlora's default, all-linear: every projection
    report = tmp_path / "report.json"  # eval --qlora: the adapter on the 4-bit base it trained on
    assert main(["eval", "--qlora", "--adapter", str(out / "adapter"), "--data", str(data),
                 "--limit", "2", "--max-new-tokens", "2", "--json", str(report)]) == 0
    assert sum(json.loads(report.read_text())["total"].values()) == 2
    model, _ = load_pretrained(BASE_DIR, device="cpu")
    load_adapter(model, out / "adapter")
    assert any(layer.lora_B.weight.abs().sum() > 0 for layer in
               (m for m in model.modules() if hasattr(m, "lora_B")))  # it trained
    assert main(["train", "--qlora", "--full", "--data", str(data)]) == 2
    pairs = tmp_path / "pairs.jsonl"  # DPO on a 4-bit base: the reference is 4-bit too
    pairs.write_text(json.dumps({"prompt": "Where does Ada Lane live?", "chosen": "Stonebridge",
                                 "rejected": "Pineford"}) + "\n", encoding="utf-8")
    assert main(["dpo", "--qlora", "--sft-adapter", str(out / "adapter"), "--data", str(pairs),
                 "--max-steps", "1", "--batch-size", "1", "--out", str(tmp_path / "dpo")]) == 0
    assert (tmp_path / "dpo" / "adapter" / "adapter_model.safetensors").exists()
