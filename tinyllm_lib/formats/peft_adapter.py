"""Hugging Face PEFT's LoRA adapter: ``adapter_config.json`` + ``adapter_model.safetensors``.

``PeftModel.save_pretrained`` writes an adapter as a folder of two files: the LoRA
settings under PEFT's field names (``r``, ``lora_alpha``, ``target_modules``, ...) and
only the LoRA matrices, under keys like
``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``;
``PeftModel.from_pretrained`` reads them onto a base model. ``save_adapter`` writes that
folder from a model with ``lora`` layers and ``load_adapter`` reads one, so an adapter
trained here loads with ``PeftModel.from_pretrained`` and a PEFT adapter loads here.

Why the format is handled as it is:

- The keys are our module paths behind ``PEFT_PREFIX``: PEFT wraps the model twice, and
  saves without the adapter's name (``default``), so no renaming is needed otherwise.
- ``adapter_config.json`` spells out, besides the LoRA settings, PEFT's switches for
  the variants (DoRA, per-layer ranks, bias, ...) set to "off": plain LoRA, said in
  full rather than left to PEFT's defaults.
- On load, options that change the math in ways ``lora`` does not implement (DoRA,
  per-layer ranks, bias training, ...) are refused rather than silently misread.
- Everything is checked (config fields, tensor keys and shapes) before the model is
  touched, so a failed load leaves it as it was.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save as safetensors_bytes
from torch import nn

from ..config import LoRAConfig
from ..files import checked_field, json_bytes, load_checked_tensors, read_json_object, write_atomic
from ..lora import ALL_LINEAR, apply_lora, lora_layers, require_lora, target_paths

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
"""PEFT wraps the model twice (PeftModel -> LoraModel -> the model), hence the prefix."""

# PEFT fields that change the math in ways the lora module does not implement: a file
# that sets any of them to something non-empty is refused rather than silently misread.
_UNSUPPORTED_PEFT_FIELDS = (
    "use_dora", "fan_in_fan_out", "modules_to_save", "layers_to_transform", "rank_pattern",
    "alpha_pattern", "lora_bias", "exclude_modules", "target_parameters",
    "trainable_token_indices", "layer_replication",
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
    for path in target_paths(model, config):
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
    layers = require_lora(model, "save_adapter")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.cpu().contiguous() for k, v in lora_state_dict(model).items()}
    # Weights first: a crash in between leaves a config that still matches its old weights
    # or weights whose shapes the old config rejects loudly, never a silent mix.
    write_atomic(directory / ADAPTER_WEIGHTS, safetensors_bytes(tensors, {"format": "pt"}))
    config = adapter_config_dict(layers[0].config, base_model_name_or_path)
    write_atomic(directory / ADAPTER_CONFIG, json_bytes(config))


def read_adapter_config(path: str | Path) -> LoRAConfig:
    """Read a PEFT ``adapter_config.json``, refusing options ``lora`` does not implement."""
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
