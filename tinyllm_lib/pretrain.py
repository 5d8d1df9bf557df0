"""Pretraining: how the base model comes to know the world before any instruction tuning.

A base model is trained on plain text to predict every next token. Documents are encoded,
joined with ``<|endoftext|>`` (so the model learns where a text ends and never mistakes
two neighbouring documents for one), and cut into blocks of the context length. Every
token of a block is a target: unlike instruction tuning, nothing is masked.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import save_pretrained
from .config import ModelConfig, TrainConfig
from .model import TinyLLM
from .tokenizer import Tokenizer
from .train import Trainer, TrainResult


@dataclass
class Block:
    """``block_size`` tokens of the packed corpus. Every token is a target, so the labels
    are the ids themselves (the loss shifts them by one)."""

    input_ids: list[int]

    @property
    def labels(self) -> list[int]:
        return self.input_ids

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class PretrainResult:
    model: TinyLLM
    tokenizer: Tokenizer
    train: TrainResult
    train_blocks: int
    val_blocks: int


def pack_documents(
    tokenizer: Tokenizer, documents: Sequence[str], block_size: int
) -> list[Block]:
    """Encode, join with ``<|endoftext|>`` and cut into full blocks of ``block_size`` tokens.

    The tail that does not fill a block is dropped: a few hundred tokens of a corpus of
    millions, and equal-length blocks need no padding.
    """
    stream: list[int] = []
    for text in documents:
        stream.extend(tokenizer.encode(text))
        stream.append(tokenizer.eos_id)
    blocks = []
    for start in range(0, len(stream) - block_size + 1, block_size):
        ids = stream[start : start + block_size]
        blocks.append(Block(ids))
    return blocks


def split_documents(
    documents: Sequence[str], seed: int, val_fraction: float = 0.02
) -> tuple[list[str], list[str]]:
    """The training and held-out documents of ``pretrain``: shuffled with ``seed``, then
    the first ``val_fraction`` (at least one) held out. With the shipped base's seed (0)
    this gives back the text it never trained on."""
    order = list(documents)
    random.Random(seed).shuffle(order)
    num_val = max(1, int(len(order) * val_fraction))
    return order[num_val:], order[:num_val]


def pretrain(
    documents: Sequence[str],
    model_config: ModelConfig,
    train_config: TrainConfig,
    out_dir: str | Path,
    run_dir: str | Path,
    log_dir: str | Path | None = None,
    val_fraction: float = 0.02,
    tokenizer: Tokenizer | None = None,
    progress: bool = True,
    resume: bool = False,
) -> PretrainResult:
    """Train a tokenizer (unless given) and a TinyLLM from random weights; save both.

    Documents are shuffled with ``train_config.seed`` before a ``val_fraction`` of them is
    held out, so validation measures text the model has not seen. ``model_config``'s
    ``vocab_size`` is replaced by the tokenizer's. The result is written with
    ``save_pretrained`` to ``out_dir``; training checkpoints go to ``run_dir`` so that
    ``resume=True`` continues an interrupted pretraining (the tokenizer is retrained
    deterministically, giving the same ids).
    """
    if tokenizer is None:
        tokenizer = Tokenizer.train(documents, model_config.vocab_size)
    model_config = ModelConfig(**{**vars(model_config), "vocab_size": tokenizer.vocab_size})
    train_docs, val_docs = split_documents(documents, train_config.seed, val_fraction)
    block = model_config.max_seq_len
    val_blocks = pack_documents(tokenizer, val_docs, block)
    train_blocks = pack_documents(tokenizer, train_docs, block)

    torch.manual_seed(train_config.seed)
    model = TinyLLM(model_config)
    out_dir = Path(out_dir)
    trainer = Trainer(
        model, train_blocks, val_blocks, train_config, pad_id=tokenizer.pad_id,
        out_dir=run_dir, log_dir=log_dir,
        run_name=f"pretrain-{out_dir.name}", progress=progress,
    )
    result = trainer.fit(resume=resume)
    save_pretrained(model, tokenizer, out_dir)
    return PretrainResult(model, tokenizer, result, len(train_blocks), len(val_blocks))
