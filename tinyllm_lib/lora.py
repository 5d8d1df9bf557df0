"""LoRA: fine-tune a frozen model through small low-rank updates, in PEFT's format.

Full fine-tuning changes every weight ``W [out, in]``. LoRA (Hu et al. 2021) freezes ``W``
and learns an update of rank ``r`` instead: ``W + scale * B @ A`` with ``A [r, in]`` and
``B [out, r]``. For ``r << in, out`` that is a tiny fraction of the parameters, so the
optimizer state is tiny too, and the adapter saved to disk is a few hundred kilobytes.

Everything here follows Hugging Face PEFT: the initialisation, the scale, where dropout
sits, the module names and the files on disk (``adapter_config.json`` and
``adapter_model.safetensors`` with keys like
``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``), so an adapter trained
here loads with ``PeftModel.from_pretrained`` and a PEFT adapter loads here.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import save as safetensors_bytes
from torch import nn

from .config import LoRAConfig
from .files import checked_field, json_bytes, load_checked_tensors, read_json_object, write_atomic

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
"""PEFT wraps the model twice (PeftModel -> LoraModel -> the model), hence the prefix."""

ALL_LINEAR = "all-linear"
OUTPUT_LAYER = "lm_head"

# PEFT fields that change the math in ways this module does not implement: a file that
# sets any of them to something non-empty is refused rather than silently misread.
_UNSUPPORTED_PEFT_FIELDS = (
    "use_dora", "fan_in_fan_out", "modules_to_save", "layers_to_transform", "rank_pattern",
    "alpha_pattern", "lora_bias", "exclude_modules", "target_parameters",
    "trainable_token_indices", "layer_replication",
)


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update: ``base(x) + scale*B(A(drop(x)))``.

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

    def __init__(self, base_layer: nn.Linear, config: LoRAConfig) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.config = config
        self.scale = config.scale
        factory = {"device": base_layer.weight.device, "dtype": base_layer.weight.dtype}
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
        weight = self.base_layer.weight.detach()
        if self.merged:
            return weight
        return (weight.float() + self.delta_weight().detach()).to(weight.dtype)

    def extra_repr(self) -> str:
        return (f"rank={self.config.rank}, scale={self.scale:g}, merged={self.merged}"
                + (", disabled" if self.disabled else ""))


def lora_layers(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    """Every LoRA layer of ``model`` with its module path."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoRALinear)]


def _target_paths(model: nn.Module, config: LoRAConfig) -> list[str]:
    """Paths of the linear layers ``config.target_modules`` selects.

    As in PEFT, a name selects every linear whose path is the name or ends in ``.name``:
    ``"q_proj"`` selects every query projection, ``"model.layers.0.self_attn.q_proj"`` one.
    """
    paths = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
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
    paths = _target_paths(model, config)
    if not paths:
        raise ValueError(f"apply_lora: target_modules={config.target_modules!r} selects nothing")
    if config.target_modules == ALL_LINEAR:  # saved as the names it stood for, like PEFT
        config = dataclasses.replace(
            config, target_modules=tuple(sorted({_last_name(p) for p in paths}))
        )
    shared = _shared_parameter_ids(model)
    for path in paths:
        if id(model.get_submodule(path).weight) in shared:
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


def _require_lora(
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
    """Fold ``scale * B @ A`` into every base weight: inference then costs nothing extra."""
    for layer in _require_lora(model, "merge_lora", merged=False):
        layer.base_layer.weight.copy_(layer.merged_weight())
        layer.merged = True
    return model


@torch.no_grad()
def unmerge_lora(model: nn.Module) -> nn.Module:
    """Subtract the update again, giving back the base weights (to float rounding)."""
    for layer in _require_lora(model, "unmerge_lora", merged=True):
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
    layers = _require_lora(model, "disable_adapters", merged=False)
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
    ordinary checkpoint that needs no LoRA code to run.
    """
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


def _adapter_key(path: str, part: str) -> str:
    return f"{PEFT_PREFIX}{path}.{part}.weight"


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA matrices under PEFT's saved key names (no adapter name, as PEFT saves them)."""
    return {
        _adapter_key(path, part): getattr(layer, part).weight.detach()
        for path, layer in lora_layers(model)
        for part in ("lora_A", "lora_B")
    }


def _expected_adapter_shapes(model: nn.Module, config: LoRAConfig) -> dict[str, tuple[int, ...]]:
    """The shapes an adapter for ``config`` has on ``model``, computed without changing it."""
    shapes: dict[str, tuple[int, ...]] = {}
    for path in _target_paths(model, config):
        linear = model.get_submodule(path)
        shapes[_adapter_key(path, "lora_A")] = (config.rank, linear.in_features)
        shapes[_adapter_key(path, "lora_B")] = (linear.out_features, config.rank)
    return shapes


def adapter_config_dict(config: LoRAConfig, base_model_name_or_path: str | None = None) -> dict:
    """``adapter_config.json`` with PEFT's field names and the values PEFT writes."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": config.rank,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "target_modules": list(config.target_modules),
        "use_rslora": config.use_rslora,
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "use_dora": False,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }


def save_adapter(
    model: nn.Module, directory: str | Path, base_model_name_or_path: str | None = None
) -> None:
    """Write the adapter (config and LoRA weights) in PEFT's on-disk format."""
    layers = _require_lora(model, "save_adapter")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.cpu().contiguous() for k, v in lora_state_dict(model).items()}
    # Weights first: a crash in between leaves a config that still matches its old weights
    # or weights whose shapes the old config rejects loudly, never a silent mix.
    write_atomic(directory / ADAPTER_WEIGHTS, safetensors_bytes(tensors, {"format": "pt"}))
    config = adapter_config_dict(layers[0].config, base_model_name_or_path)
    write_atomic(directory / ADAPTER_CONFIG, json_bytes(config))


def read_adapter_config(path: str | Path) -> LoRAConfig:
    """Read a PEFT ``adapter_config.json``, refusing options this module does not implement."""
    path = Path(path)
    data = read_json_object(path)
    if data.get("peft_type") != "LORA":
        raise ValueError(f"{path}: field 'peft_type' must be 'LORA', got {data.get('peft_type')!r}")
    if data.get("bias", "none") != "none":
        raise ValueError(f"{path}: field 'bias' must be 'none', got {data['bias']!r}")
    for name in _UNSUPPORTED_PEFT_FIELDS:
        if data.get(name):
            raise ValueError(f"{path}: field '{name}' = {data[name]!r} is not supported")
    targets = data.get("target_modules")
    names_ok = isinstance(targets, list) and targets and all(isinstance(t, str) for t in targets)
    if targets != ALL_LINEAR and not names_ok:
        raise ValueError(
            f"{path}: field 'target_modules' must be a list of module names or "
            f"'{ALL_LINEAR}', got {targets!r}"
        )
    fields = {
        "rank": checked_field(data, "r", int, path),
        "alpha": checked_field(data, "lora_alpha", float, path),
        "dropout": checked_field(data, "lora_dropout", float, path, default=0.0),
        "target_modules": targets if targets == ALL_LINEAR else tuple(targets),
        "use_rslora": checked_field(data, "use_rslora", bool, path, default=False),
    }
    try:
        return LoRAConfig(**fields)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def load_adapter(model: nn.Module, directory: str | Path) -> nn.Module:
    """Load a PEFT-format LoRA adapter into ``model`` (in place; returned).

    A model without LoRA layers gets them from the saved config first; a model that has
    them must match the saved rank, alpha and rsLoRA setting. Everything is checked before
    the model is touched, so a failed load leaves it as it was.
    """
    directory = Path(directory)
    config_path, weights_path = directory / ADAPTER_CONFIG, directory / ADAPTER_WEIGHTS
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: adapter directory not found")
    config = read_adapter_config(config_path)
    layers = lora_layers(model)
    if layers:
        current = layers[0][1].config
        pairs = (("rank", "r"), ("alpha", "lora_alpha"), ("use_rslora", "use_rslora"))
        for ours, peft_name in pairs:
            if getattr(config, ours) != getattr(current, ours):
                raise ValueError(
                    f"{config_path}: '{peft_name}' is {getattr(config, ours)} but the "
                    f"model's LoRA layers have {getattr(current, ours)}"
                )
        if any(layer.merged for _, layer in layers):
            raise ValueError("load_adapter: the model's LoRA is merged; call unmerge_lora first")
        expected = {k: tuple(v.shape) for k, v in lora_state_dict(model).items()}
    else:
        expected = _expected_adapter_shapes(model, config)
    tensors = load_checked_tensors(weights_path, expected)
    if not layers:
        apply_lora(model, config)
    with torch.no_grad():
        # state-dict tensors share storage with the parameters, so copy_ updates them.
        for key, param in lora_state_dict(model).items():
            param.copy_(tensors[key])
    return model
