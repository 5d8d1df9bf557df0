"""Configuration dataclasses for the model, LoRA and training: the one source of defaults.

The dataclass defaults are the seed project's table ("LLM 微调实战"): hidden 512, 6 layers,
8 heads, LoRA rank 8 and alpha 16, batch 4, learning rate 1e-4, 3 epochs. What each
command runs with is a named instance below (``TRAIN_PRESETS``), and the learning rate a
fine-tune gets when none is given is ``recommended_lr``: the command line builds its flags
from these fields, their help texts and those instances, so no default lives anywhere else.

Every config checks its values when it is made (``__post_init__``) and raises
``ConfigError``, which names the field, so the command line can name the flag. Every config
round-trips through JSON, so that a checkpoint on disk says exactly what produced it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
"""The project's data: the synthetic world's files (``tinyllm data``) and the shipped base."""
BASE_DIR = DATA_DIR / "base"
CACHE_DIR = DATA_DIR.parent / "outputs" / "cache"
"""Where converted copies of other tools' files are kept (GGUF weights as float32): beside
the repository's ``data/``, so the book's chapters, the tests and the command line, from
whatever folder they run, share one copy."""


class ConfigError(ValueError):
    """A config field with a value it cannot take; ``field`` names it."""

    def __init__(self, config: str, field: str, rule: str, value: Any) -> None:
        self.field, self.rule, self.value = field, rule, value
        super().__init__(f"{config}: {field} {rule}, got {value!r}")


def setting(default: Any, help: str) -> Any:
    """A dataclass field with its help text: the command line shows it beside the flag."""
    return dataclasses.field(default=default, metadata={"help": help})


def check(config: Any, rules: dict[str, tuple[bool, str]]) -> None:
    """Raise ``ConfigError`` for the first field whose rule does not hold."""
    for name, (ok, rule) in rules.items():
        if not ok:
            raise ConfigError(type(config).__name__, name, rule, getattr(config, name))


def _optional_at_least_one(value: int | None) -> bool:
    return value is None or value >= 1


@dataclass
class ModelConfig:
    """Shape of a TinyLLM (a Llama-style decoder).

    ``num_kv_heads=None`` means one key/value head per query head (plain multi-head
    attention); fewer KV heads give grouped-query attention. ``intermediate_size=None``
    derives the SwiGLU width from Llama's rule: 8/3 of the hidden size (so the three
    MLP matrices cost about as much as a 4x GELU MLP's two), rounded up, here to a
    multiple of 64; Llama rounds to 256 (4096 -> 11008), a coarse step at these widths.
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

    rank: int = setting(8, "rank r of the update B @ A")
    alpha: float = setting(16.0, "the update is scaled by alpha / rank")
    dropout: float = setting(0.0, "dropout on the LoRA branch's input")
    target_modules: tuple[str, ...] | str = setting(
        ("q_proj", "v_proj"), 'comma-separated module names, or "all-linear"'
    )
    use_rslora: bool = setting(False, "scale by alpha / sqrt(rank) (rsLoRA)")

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, list):
            self.target_modules = tuple(self.target_modules)
        check(self, {
            "rank": (self.rank >= 1, "must be >= 1"),
            "alpha": (math.isfinite(self.alpha) and self.alpha > 0, "must be > 0"),
            "dropout": (0 <= self.dropout < 1, "must be in [0, 1)"),
        })

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

    epochs: int = setting(3, "passes over the training data")
    batch_size: int = setting(4, "the micro-batch: examples per forward pass")
    grad_accum: int = setting(1, "micro-batches per optimizer step")
    lr: float = setting(1e-4, "peak learning rate")
    weight_decay: float = setting(0.01, "AdamW weight decay (on matrices only)")
    betas: tuple[float, float] = setting((0.9, 0.999), "AdamW's beta1 and beta2")
    warmup_steps: int = setting(10, "optimizer steps of linear warmup")
    min_lr_ratio: float = setting(0.1, "the cosine ends at this fraction of lr")
    max_grad_norm: float = setting(1.0, "clip the gradient to this global norm")
    max_steps: int | None = setting(None, "stop after this many steps (replaces epochs)")
    eval_every: int = setting(50, "validate every N steps (and after the last)")
    patience: int | None = setting(None, "stop after N validations without improvement")
    save_every: int | None = setting(None, "write a resumable checkpoint every N steps")
    seed: int = setting(0, "seeds the data order and dropout")
    bf16: bool = setting(False, "bf16 autocast for the forward pass")
    gradient_checkpointing: bool = setting(
        False, "recompute activations in backward: less memory, more time"
    )
    compile: bool = setting(
        False, "torch.compile the training step: faster steps after a minute of compiling"
    )

    def __post_init__(self) -> None:
        if isinstance(self.betas, list):
            self.betas = tuple(self.betas)
        check(self, {
            "epochs": (self.epochs >= 1, "must be >= 1"),
            "batch_size": (self.batch_size >= 1, "must be >= 1"),
            "grad_accum": (self.grad_accum >= 1, "must be >= 1"),
            "lr": (self.lr > 0, "must be > 0"),
            "weight_decay": (self.weight_decay >= 0, "must be >= 0"),
            "betas": (len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
                      "must be two numbers in [0, 1)"),
            "warmup_steps": (self.warmup_steps >= 0, "must be >= 0"),
            "min_lr_ratio": (0 <= self.min_lr_ratio <= 1, "must be in [0, 1]"),
            "max_grad_norm": (self.max_grad_norm > 0, "must be > 0"),
            "max_steps": (_optional_at_least_one(self.max_steps), "must be None or >= 1"),
            "eval_every": (self.eval_every >= 1, "must be >= 1"),
            "patience": (_optional_at_least_one(self.patience), "must be None or >= 1"),
            "save_every": (_optional_at_least_one(self.save_every), "must be None or >= 1"),
        })


LOSS_TYPES = ("sigmoid", "ipo", "hinge")
"""``dpo.dpo_loss``'s losses, by TRL's names."""


@dataclass
class DPOConfig:
    """What preference tuning adds to the training loop's settings (``dpo.dpo_loss``).

    ``beta`` is the strength of the pull back to the reference: the implied reward is
    ``beta * log(policy / reference)``, so a small beta lets the policy move far from the
    reference before the loss saturates. TRL's defaults: beta 0.1, the sigmoid loss.

    ``rpo_alpha`` (TRL's name; Pang et al. 2024) adds the chosen reply's negative
    log-likelihood to each pair's loss. DPO only asks chosen to beat rejected, which it can
    do while both fall; the added term holds the chosen reply's probability up.
    """

    beta: float = setting(0.1, "how strongly the policy is held to the reference")
    loss_type: str = setting("sigmoid", "sigmoid (DPO), ipo or hinge")
    label_smoothing: float = setting(0.0, "cDPO: the chance a preference label is wrong")
    precompute_ref: bool = setting(
        False, "compute the reference log-probabilities once, before training")
    rpo_alpha: float = setting(
        0.0, "RPO: add this times the chosen reply's NLL per token (0: plain DPO)")

    def __post_init__(self) -> None:
        check(self, {
            "beta": (self.beta > 0, "must be > 0"),
            "loss_type": (self.loss_type in LOSS_TYPES, "must be sigmoid, ipo or hinge"),
            "label_smoothing": (0 <= self.label_smoothing < 0.5, "must be in [0, 0.5)"),
            "rpo_alpha": (self.rpo_alpha >= 0, "must be >= 0"),
        })


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

TRAIN_PRESETS: dict[str, TrainConfig] = {
    # ``tinyllm train``: the seed's table, validating every 250 steps (the shipped data's
    # 3 epochs are about 2,600 steps). Its learning rate is recommended_lr's.
    "finetune": TrainConfig(eval_every=250),
    # ``tinyllm pretrain``: the settings the shipped base was trained with
    # (data/base/README.md): one pass over the corpus in batches of 16 blocks, a peak
    # rate for a model learning from random weights, and GPT-style decay of 0.1.
    "pretrain": TrainConfig(
        epochs=1, batch_size=16, lr=2e-3, weight_decay=0.1, warmup_steps=100,
        eval_every=200, save_every=200,
    ),
    # ``tinyllm dpo``: one pass over the pairs, 8 pairs (16 conversations) a step, at a
    # sixtieth of the rate LoRA's supervised fine-tuning of q_proj, v_proj takes. The
    # preference loss moves the log-probability of whole replies, and nothing in it holds
    # the chosen reply up: on the shipped base 5e-4 wrecked the model (0.5% exact match)
    # and 1.5e-4 lost 17 points, where 5e-5 gained (experiments/results/dpo.md).
    "dpo": TrainConfig(epochs=1, batch_size=8, lr=5e-5, warmup_steps=10, eval_every=50),
    # ``tinyllm demo``: a short run, more steps at a higher rate than ``finetune``, so the
    # effect shows within the demo's time budget.
    "demo": TrainConfig(
        epochs=1, batch_size=8, lr=2e-3, warmup_steps=20, max_steps=250, eval_every=250,
        bf16=True,
    ),
}

# The seed's 1e-4 suits LoRA on a large model; on this 5M-parameter base, 3 epochs at 1e-4
# barely move exact match (experiments/results/outcomes.md has the measurement). LoRA's
# few, zero-initialised parameters take a higher rate than full fine-tuning, which can
# overwrite what pretraining stored. Each rate is the best of those tried on the shipped
# base (experiments/results/lr_sweep.md): adapters on every linear layer train about five
# times the parameters of q_proj, v_proj (197,120 against 40,960), move the output further
# per step, and do best at a third of their rate.
LORA_LR = 3e-3  # q_proj, v_proj (the default adapter) or any other list of modules
LORA_ALL_LINEAR_LR = 1e-3
FULL_LR = 3e-4


def recommended_lr(lora: LoRAConfig | None) -> float:
    """The peak learning rate for fine-tuning the shipped base: LoRA with ``lora``, or
    every parameter when ``lora`` is ``None``."""
    if lora is None:
        return FULL_LR
    return LORA_ALL_LINEAR_LR if lora.target_modules == "all-linear" else LORA_LR


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
    except ConfigError as err:
        raise ValueError(f"{source}: {err}") from err
