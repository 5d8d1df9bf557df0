"""Save and load a whole model: the entry points that pick the format on disk.

Today there is one format, a model folder: a Hugging Face Llama checkpoint
(``config.json`` + ``model.safetensors``, see ``formats.hf_llama``) with our
``tokenizer.json`` next to it. ``transformers.LlamaForCausalLM.from_pretrained`` loads
what a reader trains here, and ``load_pretrained`` loads a Llama checkpoint saved by
``transformers`` (given a ``tokenizer.json`` of ours next to it).

Saving is atomic: the files are written into a temporary folder next to the target, which
takes the target's name only when complete. A crash mid-save leaves the old model intact.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .config import ModelConfig
from .files import recover_directory, write_directory
from .formats.hf_llama import llama_files, read_llama_config, read_llama_model
from .model import TinyLLM, default_device
from .tokenizer import Tokenizer

TOKENIZER_FILE = "tokenizer.json"


def _check_vocab(tokenizer: Tokenizer, config: ModelConfig, where: str) -> None:
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(
            f"{where}: the tokenizer has {tokenizer.vocab_size} tokens but the model's "
            f"vocab_size is {config.vocab_size}; ids past the embedding would crash"
        )


def save_pretrained(model: TinyLLM, tokenizer: Tokenizer, directory: str | Path) -> None:
    """Write ``model`` and ``tokenizer`` to ``directory``, replacing it only when complete.

    A model with LoRA layers is saved merged (base weight + update), as a plain model;
    save its adapter alone with ``formats.peft_adapter.save_adapter``. Other files
    already in ``directory`` (an adapter, logs) are kept.
    """
    target = Path(directory)
    _check_vocab(tokenizer, model.config, f"save_pretrained({target})")
    files = {**llama_files(model), TOKENIZER_FILE: tokenizer.to_json().encode("utf-8")}
    write_directory(target, files, keep_others=True)


def load_pretrained(
    directory: str | Path, device: str | torch.device | None = None
) -> tuple[TinyLLM, Tokenizer]:
    """Load a folder written by ``save_pretrained`` (or a Llama one with our tokenizer).

    The model comes back in eval mode on ``device`` (default: the best one available).
    """
    directory = Path(directory)
    if recover_directory(directory) is None or not directory.is_dir():
        raise FileNotFoundError(f"{directory}: model directory not found")
    config = read_llama_config(directory)
    tokenizer_path = directory / TOKENIZER_FILE
    if not tokenizer_path.is_file():
        raise FileNotFoundError(f"{tokenizer_path}: file not found")
    tokenizer = Tokenizer.load(tokenizer_path)
    _check_vocab(tokenizer, config, str(directory))
    model = read_llama_model(directory, config)
    return model.to(device or default_device()).eval(), tokenizer
