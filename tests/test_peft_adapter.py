"""PEFT's adapter format: PEFT's names and fields, exact round trips, clear errors, PEFT itself."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_lora import CFG, ids, make_model, randomize_b

from tinyllm_lib.config import LoRAConfig, ModelConfig
from tinyllm_lib.formats.peft_adapter import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    load_adapter,
    lora_state_dict,
    save_adapter,
)
from tinyllm_lib.lora import apply_lora, count_parameters, lora_layers
from tinyllm_lib.model import TinyLLM


def test_state_dict_keys_use_peft_names():
    model = apply_lora(make_model(), LoRAConfig())
    expected = {
        f"base_model.model.model.layers.{i}.self_attn.{p}.lora_{m}.weight"
        for i in range(CFG.num_layers) for p in ("q_proj", "v_proj") for m in "AB"
    }
    assert set(lora_state_dict(model)) == expected


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    model = apply_lora(make_model(), LoRAConfig(rank=4, alpha=8, dropout=0.1, use_rslora=True))
    randomize_b(model)
    save_adapter(model, tmp_path, base_model_name_or_path="base")
    config = json.loads((tmp_path / ADAPTER_CONFIG).read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (4, 8, 0.1)
    assert config["target_modules"] == ["q_proj", "v_proj"] and config["use_rslora"] is True
    assert config["base_model_name_or_path"] == "base" and config["bias"] == "none"
    assert sorted(load_file(tmp_path / ADAPTER_WEIGHTS)) == sorted(lora_state_dict(model))
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left

    fresh = load_adapter(make_model(), tmp_path)
    assert not any(p.requires_grad for n, p in fresh.named_parameters() if "lora" not in n)
    with torch.no_grad():
        assert torch.equal(fresh(ids()), model(ids()))
    # Loading into a model that already has matching LoRA layers also works.
    again = load_adapter(apply_lora(make_model(), LoRAConfig(rank=4, alpha=8, use_rslora=True)),
                         tmp_path)
    with torch.no_grad():
        assert torch.equal(again(ids()), model(ids()))


def test_adapter_for_another_shape_is_refused_untouched(tmp_path):
    save_adapter(apply_lora(make_model(), LoRAConfig()), tmp_path)
    other = make_model(ModelConfig(**{**CFG.__dict__, "hidden_size": 32, "num_heads": 2,
                                      "num_kv_heads": 1}))
    with pytest.raises(ValueError, match=r"adapter_model.safetensors.*q_proj.lora_A.weight.*"
                                         r"\[8, 64\].*\[8, 32\]"):
        load_adapter(other, tmp_path)
    assert not lora_layers(other)  # a failed load changes nothing


def test_missing_or_unexpected_keys_and_config_mismatch_are_named(tmp_path):
    save_adapter(apply_lora(make_model(), LoRAConfig()), tmp_path)
    tensors = load_file(tmp_path / ADAPTER_WEIGHTS)
    dropped = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"
    del tensors[dropped]
    save_file(tensors, tmp_path / ADAPTER_WEIGHTS)
    with pytest.raises(ValueError, match=r"adapter_model.safetensors.*missing.*layers\.1\.self"):
        load_adapter(make_model(), tmp_path)
    with pytest.raises(ValueError, match=r"adapter_config.json.*'r' is 8.*4"):
        load_adapter(apply_lora(make_model(), LoRAConfig(rank=4)), tmp_path)


@pytest.mark.parametrize("change, message", [
    ({"r": None}, "missing field 'r'"),
    ({"r": "8"}, "'r' must be an int"),
    ({"r": 0}, "rank must be >= 1"),
    ({"peft_type": "IA3"}, "'peft_type' must be 'LORA'"),
    ({"use_dora": True}, "'use_dora'"),
    ({"target_modules": "q_proj|v_proj"}, "'target_modules'"),
])
def test_bad_adapter_config_names_the_file_and_field(tmp_path, change, message):
    save_adapter(apply_lora(make_model(), LoRAConfig()), tmp_path)
    path = tmp_path / ADAPTER_CONFIG
    config = json.loads(path.read_text())
    config.update(change)
    config = {k: v for k, v in config.items() if v is not None}
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="adapter_config.json") as err:
        load_adapter(make_model(), tmp_path)
    assert message in str(err.value)


def test_missing_adapter_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_adapter(make_model(), tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_adapter(make_model(), tmp_path)


# ---------------------------------------------------------------- against PEFT itself


def hf_llama(model: TinyLLM):
    import transformers  # a test dependency (requirements.txt): a missing install fails
    cfg = model.config
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
        intermediate_size=cfg.mlp_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.rms_norm_eps,
        rope_theta=cfg.rope_theta, tie_word_embeddings=cfg.tie_embeddings,
    ))
    hf.load_state_dict(model.state_dict())
    return hf.eval()


@pytest.mark.parametrize("rslora", [False, True])
def test_peft_loads_our_adapter_and_gives_the_same_logits(tmp_path, rslora):
    import peft  # a test dependency (requirements.txt): a missing install fails
    model = apply_lora(make_model(), LoRAConfig(rank=4, alpha=8, use_rslora=rslora,
                                                target_modules="all-linear"))
    randomize_b(model)
    hf = hf_llama(make_model())
    save_adapter(model, tmp_path)
    peft_model = peft.PeftModel.from_pretrained(hf, tmp_path).eval()
    with torch.no_grad():
        assert (peft_model(ids()).logits - model(ids())).abs().max() < 1e-4


def test_we_load_a_peft_adapter_and_count_parameters_like_peft(tmp_path):
    import peft  # a test dependency (requirements.txt): a missing install fails
    hf = hf_llama(make_model())
    peft_model = peft.get_peft_model(hf, peft.LoraConfig(
        r=4, lora_alpha=12, target_modules="all-linear", lora_dropout=0.0))
    with torch.no_grad():
        gen = torch.Generator().manual_seed(3)
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    peft_model.save_pretrained(tmp_path)
    ours = load_adapter(make_model(), tmp_path)
    assert count_parameters(ours) == peft_model.get_nb_trainable_parameters()
    with torch.no_grad():
        assert (peft_model.eval()(ids()).logits - ours(ids())).abs().max() < 1e-4
