"""What ``save_pretrained`` writes is a folder transformers and PEFT use as it is.

The shipped base and SmolLM2-135M-Instruct are saved here and loaded back with
``AutoTokenizer``, ``AutoModelForCausalLM`` and ``PeftModel``: the same ids on mixed text,
the same chat text, the same logits, the same greedy tokens, and a LoRA adapter trained
here gives the same logits on transformers' model.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from mixed_text import TEXTS
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from tinyllm_lib.checkpoint import SMOLLM2, load_pretrained, save_pretrained
from tinyllm_lib.config import BASE_DIR, DATA_DIR, LoRAConfig
from tinyllm_lib.data import collate, load_conversations, tokenize_conversations
from tinyllm_lib.formats.peft_adapter import save_adapter
from tinyllm_lib.lora import apply_lora
from tinyllm_lib.sampling import generate
from tinyllm_lib.train import train_step

CONVERSATION = [
    {"role": "user", "content": "What is Georgia Ellis's home city?"},
    {"role": "assistant", "content": "Maplebridge"},
    {"role": "user", "content": "你好！And her lucky number?"},
]


@pytest.fixture(scope="module")
def base():
    return load_pretrained(BASE_DIR, device="cpu")


@pytest.fixture(scope="module")
def smol():
    return load_pretrained(SMOLLM2, device="cpu")


def saved(pair, tmp_path_factory, name: str) -> Path:
    directory = tmp_path_factory.mktemp(name) / "model"
    save_pretrained(*pair, directory)
    return directory


@pytest.fixture(scope="module")
def base_dir(base, tmp_path_factory) -> Path:
    return saved(base, tmp_path_factory, "base")


@pytest.fixture(scope="module")
def smol_dir(smol, tmp_path_factory) -> Path:
    return saved(smol, tmp_path_factory, "smol")


@pytest.fixture(scope="module")
def smol_hf(smol_dir):
    return AutoModelForCausalLM.from_pretrained(smol_dir).eval()


def prompt(tokenizer, length: int) -> torch.Tensor:
    ids = tokenizer.encode(" ".join(TEXTS))
    return torch.tensor([ids[:length]])


def max_diff(hf_model, model, ids: torch.Tensor) -> float:
    with torch.no_grad():
        return float((hf_model(ids).logits - model(ids)).abs().max())


@pytest.mark.parametrize("which", ["base", "smol"])
def test_autotokenizer_gives_our_ids_and_text(request, which: str) -> None:
    _, tokenizer = request.getfixturevalue(which)
    hf = AutoTokenizer.from_pretrained(request.getfixturevalue(f"{which}_dir"))
    for text in TEXTS:
        ids = tokenizer.encode(text)
        assert hf(text, add_special_tokens=False).input_ids == ids, text
        assert hf.decode(ids) == tokenizer.decode(ids) == text
    for add_generation_prompt in (False, True):
        assert hf.apply_chat_template(
            CONVERSATION, tokenize=False, add_generation_prompt=add_generation_prompt
        ) == tokenizer.apply_chat_template(CONVERSATION, add_generation_prompt)
    assert hf.eos_token_id in tokenizer.stop_ids and hf.pad_token_id == tokenizer.pad_id


def test_base_logits_equal_transformers(base, base_dir) -> None:
    model, tokenizer = base
    hf = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    for length in (1, 8, 32):
        assert max_diff(hf, model, prompt(tokenizer, length)) < 1e-5, length
    # Further in, transformers' rotary angles (position x frequency, always float32) drift
    # from ours (float64, then rounded): 1.1e-4 at 256 positions of this text. In float64
    # and with its angles, our model computes what transformers computes, to rounding.
    assert max_diff(hf, model, prompt(tokenizer, 256)) < 2e-4
    hf64, ours64 = hf.double(), copy.deepcopy(model).double()
    positions = torch.arange(model.config.max_seq_len, dtype=torch.float32)
    angles = torch.outer(positions, hf.model.rotary_emb.inv_freq.float())
    ours64.rope_cos, ours64.rope_sin = angles.cos().double(), angles.sin().double()
    assert max_diff(hf64, ours64, prompt(tokenizer, 256)) < 1e-10


def test_base_greedy_generation_equals_transformers(base, base_dir) -> None:
    model, tokenizer = base
    hf = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    ids = tokenizer.encode(tokenizer.apply_chat_template(CONVERSATION[:1], True),
                           allowed_special="all")
    ours = list(generate(model, ids, temperature=0, max_new_tokens=48,
                         stop_ids=tokenizer.stop_ids))
    with torch.no_grad():
        theirs = hf.generate(torch.tensor([ids]), max_new_tokens=48, do_sample=False)
    *tokens, stop = theirs[0, len(ids):].tolist()  # transformers keeps the stop token
    assert len(ours) < 48 and tokens == ours and stop in tokenizer.stop_ids


def test_smollm2_logits_equal_transformers(smol, smol_hf) -> None:
    model, tokenizer = smol
    for length in (1, 7, 33, 64):
        assert max_diff(smol_hf, model, prompt(tokenizer, length)) < 5e-4, length


def test_smollm2_adapter_trained_here_loads_with_peft(smol, smol_hf, tmp_path) -> None:
    model, tokenizer = smol
    model = apply_lora(copy.deepcopy(model), LoRAConfig(rank=8, alpha=16))
    conversations = load_conversations(DATA_DIR / "train.jsonl")[:8]
    batch = collate(tokenize_conversations(tokenizer, conversations, 128), tokenizer.pad_id)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(3):  # big steps, so the adapter is far from zero
        train_step(model, [batch], optimizer)
    model.eval()
    save_adapter(model, tmp_path / "adapter")
    peft_model = PeftModel.from_pretrained(copy.deepcopy(smol_hf), tmp_path / "adapter").eval()
    ids = prompt(tokenizer, 48)
    assert max_diff(smol_hf, model, ids) > 1e-2  # the adapter changes the logits
    assert max_diff(peft_model, model, ids) < 5e-4
