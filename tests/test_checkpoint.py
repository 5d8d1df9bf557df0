"""save_pretrained / load_pretrained: exact round trips, atomic saves, clear errors, HF format."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from tinyllm_lib import files
from tinyllm_lib.checkpoint import (
    CONFIG_FILE,
    TOKENIZER_FILE,
    WEIGHTS_FILE,
    load_pretrained,
    save_pretrained,
)
from tinyllm_lib.config import PRESETS, LoRAConfig, ModelConfig
from tinyllm_lib.lora import apply_lora, lora_layers
from tinyllm_lib.model import TinyLLM
from tinyllm_lib.tokenizer import Tokenizer

CFG = PRESETS["test"]
UNTIED = ModelConfig(**{**CFG.__dict__, "tie_embeddings": False, "intermediate_size": 96,
                        "rope_theta": 500.0, "dropout": 0.1})


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.train(["the cat sat on the mat. 猫坐在垫子上。"] * 3, vocab_size=300)


def make_model(config: ModelConfig = CFG, seed: int = 0) -> TinyLLM:
    torch.manual_seed(seed)
    return TinyLLM(config).eval()


def ids() -> torch.Tensor:
    return torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(5))


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        out = model(ids())
    return getattr(out, "logits", out)


@pytest.mark.parametrize("config", [CFG, UNTIED], ids=["tied", "untied"])
def test_round_trip_is_exact(tmp_path, tokenizer, config):
    model = make_model(config)
    save_pretrained(model, tokenizer, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == sorted(
        [CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE])
    keys = set(load_file(tmp_path / "m" / WEIGHTS_FILE))
    assert ("lm_head.weight" in keys) == (not config.tie_embeddings)  # tied: stored once
    loaded, tok = load_pretrained(tmp_path / "m", device="cpu")
    assert loaded.config == config and not loaded.training
    assert torch.equal(logits(loaded), logits(model))
    if config.tie_embeddings:
        assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    text = "the mat 垫子 <|im_end|>"
    assert tok.encode(text) == tokenizer.encode(text) and tok.special_tokens == \
        tokenizer.special_tokens


def test_config_json_is_a_llama_config(tmp_path, tokenizer):
    save_pretrained(make_model(UNTIED), tokenizer, tmp_path)
    data = json.loads((tmp_path / CONFIG_FILE).read_text())
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


def test_a_lora_model_is_saved_merged_as_a_plain_model(tmp_path, tokenizer):
    model = apply_lora(make_model(), LoRAConfig(rank=4, target_modules="all-linear"))
    with torch.no_grad():
        for _, layer in lora_layers(model):
            layer.lora_B.weight.normal_(0, 0.1)
    save_pretrained(model, tokenizer, tmp_path)
    assert not [k for k in load_file(tmp_path / WEIGHTS_FILE) if "lora" in k or "base_layer" in k]
    loaded, _ = load_pretrained(tmp_path, device="cpu")
    assert not lora_layers(loaded)
    assert (logits(loaded) - logits(model)).abs().max() < 1e-5
    assert (logits(loaded) - logits(make_model())).abs().max() > 1e-3  # the update is in


def test_overwrite_keeps_other_files_and_leaves_no_temp(tmp_path, tokenizer):
    target = tmp_path / "m"
    save_pretrained(make_model(seed=0), tokenizer, target)
    (target / "notes.txt").write_text("keep me")
    new = make_model(seed=1)
    save_pretrained(new, tokenizer, target)
    assert (target / "notes.txt").read_text() == "keep me"
    assert torch.equal(logits(load_pretrained(target, device="cpu")[0]), logits(new))
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_a_crash_mid_save_leaves_the_old_model_intact(tmp_path, tokenizer, monkeypatch):
    target = tmp_path / "m"
    old = make_model(seed=0)
    save_pretrained(old, tokenizer, target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    write = files._write_synced

    def crash(path, data):  # the second file of the new model does not fit
        if path.name == WEIGHTS_FILE:
            raise OSError("disk full")
        write(path, data)

    monkeypatch.setattr(files, "_write_synced", crash)
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(make_model(seed=1), tokenizer, target)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_missing_directory_and_files_are_named(tmp_path, tokenizer):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_pretrained(tmp_path / "nowhere")
    save_pretrained(make_model(), tokenizer, tmp_path / "m")
    for name in (CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE):
        broken = tmp_path / f"without-{name}"
        shutil.copytree(tmp_path / "m", broken)
        (broken / name).unlink()
        with pytest.raises(FileNotFoundError, match=name):
            load_pretrained(broken, device="cpu")


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
def test_bad_config_names_the_file_and_field(tmp_path, tokenizer, change, message):
    save_pretrained(make_model(), tokenizer, tmp_path)
    path = tmp_path / CONFIG_FILE
    data = {**json.loads(path.read_text()), **change}
    keep_null = data.pop("keep_null", False)
    path.write_text(json.dumps({k: v for k, v in data.items() if v is not None or keep_null}))
    with pytest.raises(ValueError, match="config.json") as err:
        load_pretrained(tmp_path, device="cpu")
    assert message in str(err.value)


def test_weights_of_another_shape_or_keys_are_named(tmp_path, tokenizer):
    save_pretrained(make_model(), tokenizer, tmp_path)
    weights = tmp_path / WEIGHTS_FILE
    tensors = load_file(weights)
    tensors["model.norm.weight"] = torch.ones(32)
    save_file(tensors, weights)
    with pytest.raises(ValueError, match=r"model.safetensors.*model.norm.weight.*\[32\].*\[64\]"):
        load_pretrained(tmp_path, device="cpu")
    del tensors["model.norm.weight"]
    tensors["extra.weight"] = torch.ones(2)
    save_file(tensors, weights)
    with pytest.raises(ValueError, match=r"missing \['model.norm.weight'\].*\['extra.weight'\]"):
        load_pretrained(tmp_path, device="cpu")


def test_a_tokenizer_larger_than_the_vocabulary_is_refused(tmp_path, tokenizer):
    n = tokenizer.vocab_size
    small = make_model(ModelConfig(**{**CFG.__dict__, "vocab_size": n - 1}))
    with pytest.raises(ValueError, match=f"{n} tokens.*vocab_size is {n - 1}"):
        save_pretrained(small, tokenizer, tmp_path / "m")
    assert not (tmp_path / "m").exists()
    save_pretrained(make_model(), tokenizer, tmp_path / "m")  # and a config edited to too few
    path = tmp_path / "m" / CONFIG_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), "vocab_size": n - 1}))
    with pytest.raises(ValueError, match=f"{n} tokens.*vocab_size is {n - 1}"):
        load_pretrained(tmp_path / "m", device="cpu")


# ----------------------------------------------------------- Hugging Face transformers


@pytest.mark.parametrize("config", [CFG, UNTIED], ids=["tied", "untied"])
def test_transformers_loads_what_we_save(tmp_path, tokenizer, config):
    import transformers  # a test dependency (requirements.txt): a missing install fails
    model = make_model(config)
    save_pretrained(model, tokenizer, tmp_path)
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert (logits(hf) - logits(model)).abs().max() < 1e-4


def test_we_load_what_transformers_saves(tmp_path, tokenizer):
    import transformers  # a test dependency (requirements.txt): a missing install fails
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=64,
        rms_norm_eps=1e-6, rope_theta=2000.0, tie_word_embeddings=True,
    )).eval()
    hf.save_pretrained(tmp_path)
    tokenizer.save(tmp_path / TOKENIZER_FILE)
    ours, _ = load_pretrained(tmp_path, device="cpu")
    assert (ours.config.kv_heads, ours.config.rope_theta, ours.config.rms_norm_eps) == (
        1, 2000.0, 1e-6)
    assert (logits(hf) - logits(ours)).abs().max() < 1e-4
