"""LoRA: fine-tune a frozen model through small low-rank updates, as PEFT does.

Full fine-tuning changes every weight ``W [out, in]``. LoRA (Hu et al. 2021) freezes ``W``
and learns an update of rank ``r`` instead: ``W + scale * B @ A`` with ``A [r, in]`` and
``B [out, r]``. For ``r << in, out`` that is a tiny fraction of the parameters, so the
optimizer state is tiny too, and the adapter saved to disk is a few hundred kilobytes.

Everything here follows Hugging Face PEFT: the initialisation, the scale, where dropout
sits, the module names and which layers a target name selects. This module is the math
only; PEFT's files on disk (``adapter_config.json`` + ``adapter_model.safetensors``, with
``save_adapter`` and ``load_adapter``) live in ``formats.peft_adapter``, so that an
adapter trained here loads with ``PeftModel.from_pretrained`` and a PEFT adapter loads here.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

import torch
from torch import nn

from .config import LoRAConfig

ALL_LINEAR = "all-linear"
OUTPUT_LAYER = "lm_head"
MERGE_INTO_FULL_PRECISION = (
    "Save the adapter and merge into the full-precision base instead "
    "(tinyllm export --adapter DIR --merge-adapter)"
)


class BaseLinear(Protocol):
    """What LoRA needs of the layer it adapts: its sizes, its output, and its weight.

    ``nn.Linear`` is one. A layer that keeps its weight in another form, such as QLoRA's
    4-bit codes, is one too when it has ``in_features``, ``out_features`` and a
    ``dense_weight()`` that returns the ``[out, in]`` weight it computes with. LoRA only
    reads that weight (to size and place its matrices, and to export a merged model);
    folding the update into the stored weight (``merge_lora``) needs an ``nn.Linear``.
    """

    in_features: int
    out_features: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


def is_base_linear(module: nn.Module) -> bool:
    """Whether LoRA can adapt ``module``: an ``nn.Linear`` or a ``BaseLinear`` with
    ``dense_weight()``."""
    return isinstance(module, nn.Linear) or all(
        hasattr(module, name) for name in ("in_features", "out_features", "dense_weight")
    )


def dense_weight(layer: BaseLinear) -> torch.Tensor:
    """The ``[out, in]`` weight ``layer`` computes with, as an ordinary (detached) tensor."""
    if isinstance(layer, nn.Linear):
        return layer.weight.detach()
    return layer.dense_weight().detach()


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update: ``base(x) + scale*B(A(drop(x)))``.

    The base is an ``nn.Linear`` or any other ``BaseLinear`` (a 4-bit one, for QLoRA).

    * ``B`` starts at zero, so at step 0 the adapted model computes exactly what the base
      model does: training starts from the pretrained behaviour, not from a random
      perturbation of it. ``A`` is random (kaiming-uniform, like any ``nn.Linear``) so that
      the gradient reaching ``B``, which is ``A x`` times the upstream gradient, is not zero.
    * ``scale = alpha / r`` (the original LoRA paper's choice) divides the sum over ``r``
      rank-one terms by ``r``. Under Adam those terms add up like independent vectors, so
      their sum grows like ``sqrt(r)``, not ``r``, and ``1/r`` over-corrects: larger ranks
      learn more slowly (chapter 2 measures it). rsLoRA (Kalajdzievski 2023) uses
      ``alpha / sqrt(r)``, which keeps the update's size about the same at every rank.
    * Dropout acts only on the LoRA branch's input; the frozen path sees clean inputs.
    """

    def __init__(self, base_layer: BaseLinear, config: LoRAConfig) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.config = config
        self.scale = config.scale
        weight = dense_weight(base_layer)  # A and B take the dtype and device it computes in
        factory = {"device": weight.device, "dtype": weight.dtype}
        self.lora_A = nn.Linear(base_layer.in_features, config.rank, bias=False, **factory)
        self.lora_B = nn.Linear(config.rank, base_layer.out_features, bias=False, **factory)
        self.lora_dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.merged = False
        self.disabled = False  # set by ``disable_adapters``: the layer computes the base alone
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        if self.merged or self.disabled:  # merged: the update lives inside base_layer.weight
            return out
        return out + self.scale * self.lora_B(self.lora_A(self.lora_dropout(x)))

    def delta_weight(self) -> torch.Tensor:
        """The update ``scale * B @ A`` in float32 (bf16 would round away small updates)."""
        return self.scale * (self.lora_B.weight.float() @ self.lora_A.weight.float())

    def merged_weight(self) -> torch.Tensor:
        """The weight a plain ``nn.Linear`` needs to compute what this layer computes."""
        weight = dense_weight(self.base_layer)
        if self.merged:
            return weight
        return (weight.float() + self.delta_weight().detach()).to(weight.dtype)

    def extra_repr(self) -> str:
        return (f"rank={self.config.rank}, scale={self.scale:g}, merged={self.merged}"
                + (", disabled" if self.disabled else ""))


def lora_layers(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    """Every LoRA layer of ``model`` with its module path."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoRALinear)]


def target_paths(model: nn.Module, config: LoRAConfig) -> list[str]:
    """Paths of the linear layers ``config.target_modules`` selects.

    As in PEFT, a name selects every linear whose path is the name or ends in ``.name``:
    ``"q_proj"`` selects every query projection, ``"model.layers.0.self_attn.q_proj"`` one.
    """
    paths = [name for name, m in model.named_modules() if is_base_linear(m)]
    if config.target_modules == ALL_LINEAR:
        return [p for p in paths if _last_name(p) != OUTPUT_LAYER]
    wanted = config.target_modules
    if isinstance(wanted, str):
        raise ValueError(f"LoRA target_modules must be a tuple of names or '{ALL_LINEAR}', "
                         f"got {wanted!r}")
    unknown = [t for t in wanted if not any(_selects(t, p) for p in paths)]
    if unknown:
        raise ValueError(
            f"LoRA target_modules {unknown} name no linear layer of this model; available: "
            f"{sorted({_last_name(p) for p in paths})} (or '{ALL_LINEAR}')"
        )
    return [p for p in paths if any(_selects(t, p) for t in wanted)]


def _last_name(path: str) -> str:
    return path.rpartition(".")[2]


def _selects(target: str, path: str) -> bool:
    return path == target or path.endswith("." + target)


def apply_lora(model: nn.Module, config: LoRAConfig) -> nn.Module:
    """Freeze every parameter of ``model`` and wrap the target linears in ``LoRALinear``.

    The model is changed in place (and returned). Afterwards only the LoRA matrices train.
    """
    if lora_layers(model):
        raise ValueError(
            "apply_lora: the model already has LoRA layers; applying again would stack a "
            "second adapter on the first. Use load_adapter, or start from a fresh model."
        )
    paths = target_paths(model, config)
    if not paths:
        raise ValueError(f"apply_lora: target_modules={config.target_modules!r} selects nothing")
    if config.target_modules == ALL_LINEAR:  # saved as the names it stood for, like PEFT
        config = dataclasses.replace(
            config, target_modules=tuple(sorted({_last_name(p) for p in paths}))
        )
    shared = _shared_parameter_ids(model)
    for path in paths:
        if id(getattr(model.get_submodule(path), "weight", None)) in shared:
            raise ValueError(
                f"apply_lora: {path}.weight is tied to another parameter (tie_embeddings); "
                "merging an update into it would change both. Untie it or pick other targets."
            )
    for param in model.parameters():
        param.requires_grad_(False)
    for path in paths:
        parent_path, _, name = path.rpartition(".")
        parent = model.get_submodule(parent_path)
        layer = LoRALinear(getattr(parent, name), config)
        setattr(parent, name, layer.train(parent.training))  # keep the model's train/eval mode
    return model


def _shared_parameter_ids(model: nn.Module) -> set[int]:
    seen: set[int] = set()
    shared: set[int] = set()
    for _, param in model.named_parameters(remove_duplicate=False):
        (shared if id(param) in seen else seen).add(id(param))
    return shared


def require_lora(
    model: nn.Module, action: str, merged: bool | None = None
) -> list[LoRALinear]:
    """The LoRA layers, checked to be in the ``merged`` state (if given) before any changes."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError(f"{action}: the model has no LoRA layers (call apply_lora first)")
    for path, layer in layers:
        if merged is not None and layer.merged != merged:
            state = "already merged" if layer.merged else "not merged"
            raise ValueError(f"{action}: {path} is {state}")
    return [layer for _, layer in layers]


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold ``scale * B @ A`` into every base weight: inference then costs nothing extra.

    Every base must be an ``nn.Linear``: a weight stored as 4-bit codes cannot take the
    update without being quantized again (merge into the full-precision base instead).
    """
    layers = require_lora(model, "merge_lora", merged=False)
    for path, layer in lora_layers(model):
        if not isinstance(layer.base_layer, nn.Linear):
            raise ValueError(
                f"merge_lora: {path}'s base is a {type(layer.base_layer).__name__}, not an "
                "nn.Linear; a 4-bit weight cannot take the update without being quantized "
                f"again. {MERGE_INTO_FULL_PRECISION}"
            )
    for layer in layers:
        layer.base_layer.weight.copy_(layer.merged_weight())
        layer.merged = True
    return model


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge every adapter and put the plain ``nn.Linear`` back in its place (PEFT's name).

    Afterwards the model has no LoRA layers: it is an ordinary model whose weights hold
    the update, which a new adapter can be applied on top of. Preference tuning after
    supervised fine-tuning needs this: its reference must be the fine-tuned model, and
    ``disable_adapters`` switches off only the adapter being trained.
    """
    merge_lora(model)
    for path, layer in lora_layers(model):
        parent_path, _, name = path.rpartition(".")
        setattr(model.get_submodule(parent_path), name, layer.base_layer)
    return model


@torch.no_grad()
def unmerge_lora(model: nn.Module) -> nn.Module:
    """Subtract the update again, giving back the base weights (to float rounding)."""
    for layer in require_lora(model, "unmerge_lora", merged=True):
        weight = layer.base_layer.weight
        weight.copy_((weight.float() - layer.delta_weight()).to(weight.dtype))
        layer.merged = False
    return model


@contextmanager
def disable_adapters(model: nn.Module) -> Iterator[nn.Module]:
    """Inside ``with disable_adapters(model):`` the model computes what its base computes.

    The LoRA branch is skipped, not zeroed, so no weight changes and leaving the block
    (normally or by an exception) switches every adapter back on. DPO uses this as its
    reference model: the frozen base is already in memory, so no second copy is needed.
    A merged adapter lives inside the base weights and cannot be switched off.
    """
    layers = require_lora(model, "disable_adapters", merged=False)
    for layer in layers:
        layer.disabled = True
    try:
        yield model
    finally:
        for layer in layers:
            layer.disabled = False


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The plain model's state dict (Llama key names) with each LoRA update folded in.

    The model itself is left as it is. This is how a LoRA-tuned model is exported as an
    ordinary checkpoint that needs no LoRA code to run. So every linear layer must be an
    ``nn.Linear``: one that keeps its weight in another form (QLoRA's 4-bit codes) has no
    plain weight to export, and the merged one would have to be quantized again.
    """
    for path, module in model.named_modules():
        if is_base_linear(module) and not isinstance(module, nn.Linear):
            raise ValueError(
                f"merged_state_dict: {path} is a {type(module).__name__}, not an nn.Linear; "
                f"its weight is not stored as a plain tensor. {MERGE_INTO_FULL_PRECISION} "
                "(a 4-bit model without LoRA saves as it is: save_pretrained)"
            )
    state = model.state_dict()
    for path, layer in lora_layers(model):
        for part in ("lora_A", "lora_B"):
            del state[f"{path}.{part}.weight"]
        for leaf, tensor in layer.base_layer.state_dict().items():
            del state[f"{path}.base_layer.{leaf}"]
            state[f"{path}.{leaf}"] = tensor
        state[f"{path}.weight"] = layer.merged_weight()
    return state


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; a tied matrix counts once."""
    params = list(model.parameters())  # parameters() yields a shared tensor only once
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return trainable, sum(p.numel() for p in params)


def trainable_report(model: nn.Module) -> str:
    """The one-line summary PEFT's ``print_trainable_parameters`` prints."""
    trainable, total = count_parameters(model)
    return (
        f"trainable params: {trainable:,} || all params: {total:,} || "
        f"trainable%: {100 * trainable / total:.4f}"
    )
