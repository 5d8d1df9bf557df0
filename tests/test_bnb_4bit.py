"""A 4-bit model saved here is bitsandbytes' checkpoint, tensor for tensor, both ways.

Against bitsandbytes itself (``QuantState.as_dict`` / ``from_dict``, its CPU backend) and
transformers (``BitsAndBytesConfig``, ``AutoModelForCausalLM`` loading and saving in 4 bits),
on the shipped base: the same keys and bytes, the same logits, bit-identical round trips,
and a clear error, naming the tensor and the file, for each way a file can be broken.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import bitsandbytes.functional as bnbf
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from tinyllm_lib.checkpoint import load_pretrained, save_pretrained
from tinyllm_lib.config import BASE_DIR, LoRAConfig
from tinyllm_lib.formats.bnb_4bit import quant_state_dict, quantization_config
from tinyllm_lib.formats.peft_adapter import save_adapter
from tinyllm_lib.lora import apply_lora, merged_state_dict
from tinyllm_lib.quant import Linear4bit, dequantize, quantize_4bit, quantize_model

LAYER = "model.layers.1.self_attn.q_proj.weight"
IDS = torch.randint(0, 4096, (2, 32), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def base():
    return load_pretrained(BASE_DIR, device="cpu")


@pytest.fixture(scope="module")
def quantized(base):
    model, tokenizer = base
    return quantize_model(copy.deepcopy(model)), tokenizer


@pytest.fixture(scope="module")
def saved_dir(quantized, tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("nf4") / "model"
    save_pretrained(*quantized, directory)
    return directory


def random_weight(shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 0.02


SETTINGS = [("nf4", True, 64), ("fp4", False, 64), ("nf4", True, 128), ("fp4", True, 32)]


@pytest.mark.parametrize("quant_type, double_quant, blocksize", SETTINGS)
def test_saved_tensors_are_bitsandbytes_quant_state_as_dict(quant_type, double_quant,
                                                            blocksize):
    w = random_weight((96, 512))
    ours = quant_state_dict(quantize_4bit(w, blocksize, double_quant, quant_type), "weight")
    packed, state = bnbf.quantize_4bit(w, blocksize=blocksize, quant_type=quant_type,
                                       compress_statistics=double_quant)
    # transformers saves a bnb Linear4bit's state under "<path>.weight.<key>"
    theirs = {"weight": packed,
              **{f"weight.{k}": v for k, v in state.as_dict(packed=True).items()}}
    assert list(ours) == list(theirs)
    for key in theirs:
        assert ours[key].dtype == theirs[key].dtype, key
        assert torch.equal(ours[key], theirs[key]), key


@pytest.mark.parametrize("quant_type, double_quant, blocksize", SETTINGS)
def test_bitsandbytes_reads_our_quant_state(quant_type, double_quant, blocksize):
    q = quantize_4bit(random_weight((64, 256), seed=1), blocksize, double_quant, quant_type)
    saved = quant_state_dict(q, "weight")
    packed = saved.pop("weight")
    state = bnbf.QuantState.from_dict(saved, device="cpu")
    assert torch.equal(bnbf.dequantize_4bit(packed, state), dequantize(q))


@pytest.mark.parametrize("quant_type, double_quant", [("nf4", True), ("fp4", False)])
def test_quantization_config_is_bitsandbytes_config_to_dict(quant_type, double_quant):
    theirs = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                                bnb_4bit_use_double_quant=double_quant,
                                bnb_4bit_compute_dtype=torch.float32,
                                llm_int8_skip_modules=["lm_head"]).to_dict()
    assert quantization_config(quant_type, double_quant, torch.float32, ["lm_head"]) == theirs


def assert_same_model(a: nn.Module, b: nn.Module):
    assert {n: type(m) for n, m in a.named_modules()} == {n: type(m) for n, m in b.named_modules()}
    state_a, state_b = a.state_dict(), b.state_dict()
    assert list(state_a) == list(state_b)
    for key in state_a:
        assert state_a[key].dtype == state_b[key].dtype, key
        assert torch.equal(state_a[key], state_b[key]), key
    with torch.no_grad():
        assert torch.equal(a(IDS), b(IDS))


def test_round_trip_of_the_quantized_base_is_bit_identical(quantized, saved_dir):
    model, _ = quantized
    loaded, _ = load_pretrained(saved_dir, device="cpu")
    assert isinstance(loaded.model.layers[0].mlp.down_proj, Linear4bit)
    assert_same_model(model, loaded)
    config = json.loads((saved_dir / "config.json").read_text())["quantization_config"]
    assert config["llm_int8_skip_modules"] == ["lm_head"]


def test_a_partly_quantized_fp4_model_round_trips(base, tmp_path):
    model = quantize_model(copy.deepcopy(base[0]), targets=("q_proj", "v_proj"),
                           double_quant=False, quant_type="fp4", blocksize=128)
    save_pretrained(model, base[1], tmp_path / "fp4")
    loaded, _ = load_pretrained(tmp_path / "fp4", device="cpu")
    assert isinstance(loaded.model.layers[0].self_attn.o_proj, nn.Linear)
    assert_same_model(model, loaded)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "fp4")  # same layers left alone
    assert type(hf.model.layers[0].self_attn.o_proj) is nn.Linear
    assert type(hf.model.layers[0].self_attn.v_proj).__name__ == "Linear4bit"


def test_transformers_loads_our_folder_in_4bit_with_our_logits(quantized, saved_dir):
    hf = AutoModelForCausalLM.from_pretrained(saved_dir)
    assert type(hf.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    with torch.no_grad():
        ours = quantized[0](IDS)
        # In train mode bitsandbytes dequantizes and multiplies in float32, as we do.
        hf.train()
        assert (hf(IDS).logits - ours).abs().max() < 3e-5  # measured: 9.1e-6
        # In eval mode, on a CPU with AVX512-BF16, it repacks the weights for a bfloat16
        # kernel: the same weights, a coarser product (logits reach about 22 here).
        hf.eval()
        assert (hf(IDS).logits - ours).abs().max() < 0.1  # measured: 0.075


def test_transformers_quantizes_and_saves_the_same_files(base, quantized, saved_dir, tmp_path):
    save_pretrained(*base, tmp_path / "plain")
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=torch.float32,
                                llm_int8_skip_modules=["lm_head"])
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "plain", quantization_config=config)
    hf.save_pretrained(tmp_path / "hf")
    ours, theirs = (load_file(d / "model.safetensors") for d in (saved_dir, tmp_path / "hf"))
    assert sorted(ours) == sorted(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    read = (json.loads((d / "config.json").read_text()) for d in (saved_dir, tmp_path / "hf"))
    assert next(read)["quantization_config"] == next(read)["quantization_config"]
    shutil.copy(saved_dir / "tokenizer.json", tmp_path / "hf")
    assert_same_model(quantized[0], load_pretrained(tmp_path / "hf", device="cpu")[0])


# ----------------------------------------------------------------------------- broken files


def quant_state_json(info: dict) -> torch.Tensor:
    return torch.tensor(list(json.dumps(info).encode()), dtype=torch.uint8)


def edit_json(**changes):
    def edit(tensors):
        key = f"{LAYER}.quant_state.bitsandbytes__nf4"
        info = json.loads(bytes(tensors[key].tolist()))
        tensors[key] = quant_state_json({**info, **changes})
    return edit


def replace(key, make):
    def edit(tensors):
        tensors[key] = make(tensors[key])
    return edit


STATE = f"{LAYER}.quant_state.bitsandbytes__nf4"
BROKEN = {
    "missing absmax": (lambda t: t.pop(f"{LAYER}.absmax"), rf"missing \['{LAYER}.absmax'\]"),
    "missing nested_quant_map": (lambda t: t.pop(f"{LAYER}.nested_quant_map"),
                                 rf"missing \['{LAYER}.nested_quant_map'\]"),
    "missing quant_state": (lambda t: t.pop(STATE), rf"missing \['{STATE}'\]"),
    "packed size": (replace(LAYER, lambda v: v[:-2]), rf"'{LAYER}' has shape \[32766, 1\]"),
    "JSON shape": (edit_json(shape=[256, 512]), rf"'{STATE}': shape \[256, 512\] does not"),
    "absmax length": (replace(f"{LAYER}.absmax", lambda v: v[:-1]),
                      rf"'{LAYER}.absmax': shape \[1023\], expected \[1024\]"),
    "nested_absmax length": (replace(f"{LAYER}.nested_absmax", lambda v: v.repeat(2)),
                             rf"'{LAYER}.nested_absmax': shape \[8\], expected \[4\]"),
    "absmax dtype": (replace(f"{LAYER}.absmax", lambda v: v.float()),
                     rf"'{LAYER}.absmax' is float32, expected uint8"),
    "bad JSON": (replace(STATE, lambda v: v[:-1]), rf"'{STATE}': not valid JSON"),
    "unknown quant_type": (edit_json(quant_type="int4"),
                           rf"'{STATE}': unknown quant_type 'int4'"),
    "missing JSON field": (lambda t: t.update({STATE: quant_state_json({"quant_type": "nf4"})}),
                           rf"'{STATE}': expected a JSON object with fields"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_4bit_file_names_the_tensor_and_the_file(case, saved_dir, tmp_path):
    edit, message = BROKEN[case]
    broken = tmp_path / "model"
    shutil.copytree(saved_dir, broken)
    tensors = load_file(broken / "model.safetensors")
    edit(tensors)
    save_file(tensors, broken / "model.safetensors")
    with pytest.raises(ValueError, match=message) as error:
        load_pretrained(broken, device="cpu")
    assert str(error.value).startswith(f"{broken / 'model.safetensors'}: ")


def test_an_unknown_quant_type_in_config_json_is_refused(saved_dir, tmp_path):
    broken = tmp_path / "model"
    shutil.copytree(saved_dir, broken)
    config = json.loads((broken / "config.json").read_text())
    config["quantization_config"]["bnb_4bit_quant_type"] = "int4"
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config.json: quantization_config: unknown "
                                         r"bnb_4bit_quant_type 'int4'"):
        load_pretrained(broken, device="cpu")


# ----------------------------------------------------------------------------- refusals


def test_int4_has_no_bitsandbytes_layout(base, tmp_path):
    model = quantize_model(copy.deepcopy(base[0]), quant_type="int4")
    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.q_proj\.weight: "
                                         r"quant_type 'int4' has no bitsandbytes layout"):
        save_pretrained(model, base[1], tmp_path / "int4")
    assert not (tmp_path / "int4").exists()


def test_a_4bit_model_is_not_merged_into_plain_weights(quantized, tmp_path):
    model, tokenizer = quantized
    with pytest.raises(ValueError, match=r"q_proj is a Linear4bit, not an nn.Linear.*"
                                         r"merge into the full-precision base"):
        merged_state_dict(model)
    adapted = apply_lora(copy.deepcopy(model), LoRAConfig())
    with pytest.raises(ValueError, match=r"q_proj.base_layer is a Linear4bit"):
        merged_state_dict(adapted)
    with pytest.raises(ValueError, match=r"q_proj is a LoRA layer on a 4-bit model.*"
                                         r"Save the adapter alone"):
        save_pretrained(adapted, tokenizer, tmp_path / "merged")
    save_adapter(adapted, tmp_path / "adapter")  # the adapter alone is saved as ever
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()


def test_one_quant_type_for_the_whole_model(base, tmp_path):
    model = quantize_model(copy.deepcopy(base[0]), targets=("q_proj",))
    quantize_model(model, targets=("v_proj",), quant_type="fp4")
    with pytest.raises(ValueError, match=r"v_proj is fp4 \(double_quant=True\) but "
                                         r"model\.layers\.0\.self_attn\.q_proj is nf4"):
        save_pretrained(model, base[1], tmp_path / "mixed")
