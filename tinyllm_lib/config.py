"""Configuration dataclasses for the model, LoRA and training.

The defaults are the seed project's table ("LLM 微调实战"): hidden 512, 6 layers, 8 heads,
LoRA rank 8 and alpha 16, batch 4, learning rate 1e-4, 3 epochs. Every config round-trips
through JSON so that a checkpoint on disk says exactly what produced it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class ModelConfig:
    """Shape of a TinyLLM (a Llama-style decoder).

    ``num_kv_heads=None`` means one key/value head per query head (plain multi-head
    attention); fewer KV heads give grouped-query attention. ``intermediate_size=None``
    derives the SwiGLU width the way Llama does: 8/3 of the hidden size (so the three
    MLP matrices cost about as much as a 4x GELU MLP's two), rounded up to a multiple of 64.
    """

    vocab_size: int = 4096
    hidden_size: int = 512
    num_layers: int = 6
    num_heads: int = 8
    num_kv_heads: int | None = None
    intermediate_size: int | None = None
    max_seq_len: int = 512
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    tie_embeddings: bool = True
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"ModelConfig: hidden_size={self.hidden_size} is not divisible by "
                f"num_heads={self.num_heads}"
            )
        if self.num_heads % self.kv_heads:
            raise ValueError(
                f"ModelConfig: num_heads={self.num_heads} is not divisible by "
                f"num_kv_heads={self.kv_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"ModelConfig: head_dim={self.head_dim} must be even for RoPE")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def kv_heads(self) -> int:
        """The number of key/value heads actually used."""
        return self.num_kv_heads or self.num_heads

    @property
    def mlp_size(self) -> int:
        """The SwiGLU hidden width actually used."""
        if self.intermediate_size is not None:
            return self.intermediate_size
        width = int(8 * self.hidden_size / 3)
        return -(-width // 64) * 64


@dataclass
class LoRAConfig:
    """Low-rank adaptation settings, with PEFT's meaning for every field.

    The update added to a frozen weight W is ``scale * B @ A`` with ``A: [rank, in]``,
    ``B: [out, rank]`` and ``scale = alpha / rank`` (``alpha / sqrt(rank)`` with rsLoRA).
    ``target_modules`` names the linear layers to adapt by their last name component, or
    is ``"all-linear"`` for every linear layer except ``lm_head``.
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] | str = ("q_proj", "v_proj")
    use_rslora: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, list):
            self.target_modules = tuple(self.target_modules)
        if self.rank < 1:
            raise ValueError(f"LoRAConfig: rank must be >= 1, got {self.rank}")

    @property
    def scale(self) -> float:
        return self.alpha / (self.rank**0.5 if self.use_rslora else self.rank)


@dataclass
class TrainConfig:
    """Training-loop settings.

    ``batch_size`` is the micro-batch; one optimizer step sees ``batch_size * grad_accum``
    examples. The learning rate warms up linearly for ``warmup_steps`` optimizer steps,
    then follows a cosine down to ``min_lr_ratio * lr``. ``gradient_checkpointing``
    recomputes each decoder block's activations during backward instead of keeping them
    (less memory, for one extra forward pass of each block). ``compile`` runs the training
    forward pass, the loss and their backward through ``torch.compile``, which fuses the
    many small element-wise operations (norms, RoPE, SwiGLU, casts, the log-softmax) into
    a few generated kernels: faster steps, after a one-time compilation of about a minute
    on a 2-core CPU.
    """

    epochs: int = 3
    batch_size: int = 4
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1
    max_grad_norm: float = 1.0
    max_steps: int | None = None
    eval_every: int = 50
    patience: int | None = None
    save_every: int | None = None
    seed: int = 0
    bf16: bool = False
    gradient_checkpointing: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.betas, list):
            self.betas = tuple(self.betas)
        for name in ("epochs", "batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig: {name} must be >= 1, got {getattr(self, name)}")


PRESETS: dict[str, ModelConfig] = {
    # The seed project's model.
    "seed": ModelConfig(),
    # The shipped base model in data/base: small enough that a LoRA fine-tune of it runs a
    # book chapter in about two minutes on a 2-core CPU. vocab_size is the tokenizer's.
    # Five layers since base v8: the fifth raised the LoRA mean from 82.5% to 87.2% where
    # seven corpora for four layers had only traded one skill for another.
    "base": ModelConfig(
        vocab_size=4096, hidden_size=256, num_layers=5, num_heads=4, max_seq_len=256,
    ),
    # Small enough for unit tests to train in a second.
    "test": ModelConfig(
        vocab_size=320, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
        max_seq_len=128,
    ),
}


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return dataclasses.asdict(config)


def config_from_dict(cls: type[T], data: dict[str, Any], source: str = "config") -> T:
    """Build ``cls`` from a dict, naming ``source`` and the field when something is wrong."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{source}: unknown field(s) {unknown} for {cls.__name__}")
    try:
        return cls(**data)
    except TypeError as err:
        raise ValueError(f"{source}: {err}") from err


def save_config(config: Any, path: str | Path) -> None:
    Path(path).write_text(json.dumps(config_to_dict(config), indent=2) + "\n", encoding="utf-8")


def load_config(cls: type[T], path: str | Path) -> T:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: line {err.lineno}: invalid JSON ({err.msg})") from err
    return config_from_dict(cls, data, source=str(path))

