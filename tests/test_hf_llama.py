"""The Hugging Face Llama format: config.json's fields, clear errors, transformers itself."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_checkpoint import CFG, UNTIED, logits, make_model

from tinyllm_lib.formats.hf_llama import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    llama_files,
    read_llama_config,
    read_llama_model,
)
from tinyllm_lib.model import TinyLLM


def write_llama(model: TinyLLM, directory: Path) -> None:
    """The format's files alone: what ``save_pretrained`` writes, less the tokenizer."""
    for name, data in llama_files(model).items():
        (directory / name).write_bytes(data)


def read_llama(directory: Path) -> TinyLLM:
    return read_llama_model(directory, read_llama_config(directory)).eval()


def test_config_json_is_a_llama_config():
    data = json.loads(llama_files(make_model(UNTIED))[CONFIG_FILE])
    assert data["model_type"] == "llama" and data["architectures"] == ["LlamaForCausalLM"]
    assert {k: data[k] for k in (
        "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "intermediate_size", "max_position_embeddings", "rope_theta",
        "rms_norm_eps", "tie_word_embeddings", "attention_dropout", "head_dim", "hidden_act",
    )} == {
        "vocab_size": 320, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 96, "max_position_embeddings": 128,
        "rope_theta": 500.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
        "attention_dropout": 0.1, "head_dim": 16, "hidden_act": "silu",
    }


@pytest.mark.parametrize("change, message", [
    ({"num_layers": 3}, "unknown field(s) ['num_layers']"),
    ({"hidden_size": "64"}, "'hidden_size' must be an int"),
    ({"num_hidden_layers": 0}, "'num_hidden_layers' must be >= 1"),
    ({"vocab_size": None}, "missing field 'vocab_size'"),
    ({"rms_norm_eps": None, "keep_null": True}, "'rms_norm_eps' must be a number, got None"),
    ({"model_type": "gpt2"}, "'model_type' must be 'llama'"),
    ({"hidden_act": "gelu"}, "'hidden_act' must be 'silu'"),
    ({"num_attention_heads": 5}, "not divisible"),
    ({"head_dim": 32}, "'head_dim' is 32"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4}}, "not plain RoPE"),
])
def test_bad_config_names_the_file_and_field(tmp_path, change, message):
    write_llama(make_model(), tmp_path)
    path = tmp_path / CONFIG_FILE
    data = {**json.loads(path.read_text()), **change}
    keep_null = data.pop("keep_null", False)
    path.write_text(json.dumps({k: v for k, v in data.items() if v is not None or keep_null}))
    with pytest.raises(ValueError, match="config.json") as err:
        read_llama_config(tmp_path)
    assert message in str(err.value)


def test_weights_of_another_shape_or_keys_are_named(tmp_path):
    write_llama(make_model(), tmp_path)
    weights = tmp_path / WEIGHTS_FILE
    tensors = load_file(weights)
    tensors["model.norm.weight"] = torch.ones(32)
    save_file(tensors, weights)
    with pytest.raises(ValueError, match=r"model.safetensors.*model.norm.weight.*\[32\].*\[64\]"):
        read_llama(tmp_path)
    del tensors["model.norm.weight"]
    tensors["extra.weight"] = torch.ones(2)
    save_file(tensors, weights)
    with pytest.raises(ValueError, match=r"missing \['model.norm.weight'\].*\['extra.weight'\]"):
        read_llama(tmp_path)


# ----------------------------------------------------------- Hugging Face transformers


@pytest.mark.parametrize("config", [CFG, UNTIED], ids=["tied", "untied"])
def test_transformers_loads_what_we_save(tmp_path, config):
    import transformers  # a test dependency (requirements.txt): a missing install fails
    model = make_model(config)
    write_llama(model, tmp_path)
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert (logits(hf) - logits(model)).abs().max() < 1e-4


def test_we_load_what_transformers_saves(tmp_path):
    import transformers  # a test dependency (requirements.txt): a missing install fails
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=64,
        rms_norm_eps=1e-6, rope_theta=2000.0, tie_word_embeddings=True,
    )).eval()
    hf.save_pretrained(tmp_path)
    ours = read_llama(tmp_path)
    assert (ours.config.kv_heads, ours.config.rope_theta, ours.config.rms_norm_eps) == (
        1, 2000.0, 1e-6)
    assert (logits(hf) - logits(ours)).abs().max() < 1e-4
