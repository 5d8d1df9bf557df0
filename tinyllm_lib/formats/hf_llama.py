"""Hugging Face's Llama checkpoint: ``config.json`` + ``model.safetensors``.

``transformers.LlamaForCausalLM.save_pretrained`` writes a folder with a ``config.json``
(a ``LlamaConfig``: the shape and the options of the model) and ``model.safetensors``
(each weight under its module path); ``from_pretrained`` reads such a folder back.
TinyLLM is a Llama with Llama's module names, so the weights need no renaming and the
config needs only a table of names: ``LlamaForCausalLM.from_pretrained`` loads what a
reader trains here, and a Llama checkpoint saved by ``transformers`` loads here.

Why each part of the mapping is as it is:

- Our ``ModelConfig`` fields map one to one onto Llama's (``LLAMA_FIELDS``). ``dropout``
  becomes ``attention_dropout``, a training-time setting that inference ignores on both
  sides.
- A field a file leaves out means what transformers then uses (``LLAMA_DEFAULTS``,
  ``DEFAULT_ROPE_THETA``; no ``num_key_value_heads`` means one per attention head), so
  a file means the same here as there.
- Options whose other values would change the math TinyLLM implements (``LLAMA_FIXED``)
  are written with TinyLLM's value and refused on load when different, as is RoPE
  scaling: a silently misread file would give other logits, and no error.
- Fields transformers writes that do not affect the logits (``LLAMA_IGNORED``: token ids,
  dtype, versions) are skipped; any other unknown field is refused rather than guessed.
- ``rope_theta`` is top-level in transformers 4's files and inside ``rope_parameters``
  in transformers 5's; both load (``_rope_theta``).
- A tied output head is left out of the weights, as transformers does, and re-tied on
  load; a model with LoRA layers is saved merged, as a plain Llama that needs no LoRA code.
- A 4-bit model's weights and its ``quantization_config`` are ``formats.bnb_4bit``'s: this
  module writes what that one hands it, and leaves the field to it on load.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_bytes

from ..config import ModelConfig
from ..files import checked_field, json_bytes, load_checked_tensors, read_json_object
from ..lora import merged_state_dict
from ..model import TinyLLM

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
GENERATION_FILE = "generation_config.json"

# (ModelConfig field, LlamaConfig field, JSON kind)
LLAMA_FIELDS: tuple[tuple[str, str, type], ...] = (
    ("vocab_size", "vocab_size", int),
    ("hidden_size", "hidden_size", int),
    ("num_layers", "num_hidden_layers", int),
    ("num_heads", "num_attention_heads", int),
    ("num_kv_heads", "num_key_value_heads", int),
    ("intermediate_size", "intermediate_size", int),
    ("max_seq_len", "max_position_embeddings", int),
    ("rope_theta", "rope_theta", float),
    ("rms_norm_eps", "rms_norm_eps", float),
    ("tie_embeddings", "tie_word_embeddings", bool),
    ("dropout", "attention_dropout", float),
)
# Llama fields a file may leave out, with the value transformers then uses.
# (A missing num_key_value_heads means one per attention head.)
LLAMA_DEFAULTS: dict[str, Any] = {"tie_word_embeddings": False, "attention_dropout": 0.0}
DEFAULT_ROPE_THETA = 10000.0
# Llama options whose other values would change the math TinyLLM implements.
LLAMA_FIXED: dict[str, Any] = {"hidden_act": "silu", "attention_bias": False, "mlp_bias": False}
# Fields transformers writes that do not affect the logits.
LLAMA_IGNORED = frozenset({
    "architectures", "bos_token_id", "eos_token_id", "pad_token_id", "dtype", "torch_dtype",
    "initializer_range", "pretraining_tp", "transformers_version", "use_cache", "_name_or_path",
})


def config_to_llama(config: ModelConfig) -> dict[str, Any]:
    """``config.json`` for ``config``: a Llama config that also says everything we need."""
    data: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", **LLAMA_FIXED
    }
    resolved = {"num_kv_heads": config.kv_heads, "intermediate_size": config.mlp_size}
    for ours, theirs, _ in LLAMA_FIELDS:
        data[theirs] = resolved.get(ours, getattr(config, ours))
    data["head_dim"] = config.head_dim
    return data


def _rope_theta(data: dict[str, Any], path: Path) -> Any:
    """transformers 4 writes ``rope_theta``; transformers 5 nests it in ``rope_parameters``."""
    if data.get("rope_scaling") is not None:
        raise ValueError(f"{path}: field 'rope_scaling' is not supported (RoPE scaling)")
    params = data.get("rope_parameters")
    if params is None:
        return data.get("rope_theta", DEFAULT_ROPE_THETA)
    if not isinstance(params, dict) or params.get("rope_type", "default") != "default":
        raise ValueError(f"{path}: field 'rope_parameters' = {params!r} is not plain RoPE")
    theta = params.get("rope_theta", data.get("rope_theta", DEFAULT_ROPE_THETA))
    if "rope_theta" in data and data["rope_theta"] != theta:
        raise ValueError(f"{path}: 'rope_theta' and 'rope_parameters.rope_theta' disagree")
    return theta


def config_from_llama(data: dict[str, Any], path: Path) -> ModelConfig:
    """The ``ModelConfig`` a Llama ``config.json`` describes; errors name ``path`` and field.

    Values equal to what ``ModelConfig`` would derive anyway come back as ``None``
    (``num_kv_heads``, ``intermediate_size``), so a save/load round trip is exact.
    """
    known = {theirs for _, theirs, _ in LLAMA_FIELDS} | set(LLAMA_FIXED) | LLAMA_IGNORED
    # quantization_config: how the weights are stored, not the model (formats.bnb_4bit)
    special = {"model_type", "head_dim", "rope_parameters", "rope_scaling",
               "quantization_config"}
    unknown = sorted(set(data) - known - special)
    if unknown:
        raise ValueError(f"{path}: unknown field(s) {unknown} for a Llama/TinyLLM config")
    for name, value in {"model_type": "llama", **LLAMA_FIXED}.items():
        if data.get(name, LLAMA_FIXED.get(name)) != value:
            raise ValueError(f"{path}: field '{name}' must be {value!r}, got {data.get(name)!r}")
    values = {
        **LLAMA_DEFAULTS, "num_key_value_heads": data.get("num_attention_heads"), **data,
        "rope_theta": _rope_theta(data, path),
    }
    fields: dict[str, Any] = {}
    for ours, theirs, kind in LLAMA_FIELDS:
        fields[ours] = checked_field(values, theirs, kind, path, minimum=1 if kind is int else None)
    config = config_from_fields(fields, path)
    if data.get("head_dim") not in (None, config.head_dim):
        raise ValueError(
            f"{path}: field 'head_dim' is {data['head_dim']} but hidden_size / "
            f"num_attention_heads = {config.head_dim}"
        )
    return config


def config_from_fields(fields: dict[str, Any], path: str | Path) -> ModelConfig:
    """``ModelConfig(**fields)`` read from ``path``: its errors name the file.

    Values equal to what ``ModelConfig`` would derive anyway come back as ``None``
    (``num_kv_heads``, ``intermediate_size``), so a model read from another tool's file
    has the config it would have after a save/load round trip here (``formats.gguf``
    reads its fields through this too).
    """
    try:
        config = ModelConfig(**fields)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    if config.num_kv_heads == config.num_heads:
        config.num_kv_heads = None
    if config.intermediate_size == replace(config, intermediate_size=None).mlp_size:
        config.intermediate_size = None
    return config


def _weights_to_save(tie_embeddings: bool,
                     state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Llama-named tensors; a tied head is left out, as transformers does, and re-tied on load."""
    if tie_embeddings:
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def llama_files(
    model: TinyLLM, state: dict[str, torch.Tensor] | None = None,
    quantization_config: dict[str, Any] | None = None,
) -> dict[str, bytes]:
    """``config.json`` and ``model.safetensors`` for ``model``, as file name -> bytes.

    Bytes rather than files, so that the caller decides how they reach the disk (with
    the tokenizer, in one atomic folder write). ``state`` is the tensors to save under
    their Llama names, by default ``merged_state_dict(model)``; a 4-bit model brings its
    own, with the ``quantization_config`` that tells a reader how they are stored
    (``formats.bnb_4bit.bnb_4bit_files``).
    """
    config = config_to_llama(model.config)
    if quantization_config is not None:
        config["quantization_config"] = quantization_config
    weights = _weights_to_save(model.config.tie_embeddings,
                               merged_state_dict(model) if state is None else state)
    return {
        CONFIG_FILE: json_bytes(config),
        WEIGHTS_FILE: safetensors_bytes(weights, metadata={"format": "pt"}),
    }


def generation_config(
    eos_token_ids: Sequence[int], pad_token_id: int, bos_token_id: int | None = None
) -> dict[str, bytes]:
    """``generation_config.json``: the ids transformers' ``generate`` stops at and pads with.

    Several end ids are allowed (a list): a chat reply ends at ``<|im_end|>``, a text at
    ``<|endoftext|>``, and ``generate`` stops at either as ``tinyllm_lib.generate`` does.
    No sampling settings: ``generate`` then decodes greedily unless told otherwise.
    """
    data: dict[str, Any] = {"eos_token_id": list(eos_token_ids), "pad_token_id": pad_token_id}
    if bos_token_id is not None:
        data["bos_token_id"] = bos_token_id
    return {GENERATION_FILE: json_bytes(data)}


def read_llama_config(directory: str | Path) -> ModelConfig:
    """The ``ModelConfig`` of the Llama folder ``directory`` (its ``config.json``)."""
    path = Path(directory) / CONFIG_FILE
    return config_from_llama(read_json_object(path), path)


def read_llama_model(directory: str | Path, config: ModelConfig) -> TinyLLM:
    """A ``TinyLLM(config)`` holding the weights in ``directory``'s ``model.safetensors``.

    Every key and shape is checked before any weight is loaded, so a file made for
    another model is refused by name. The model comes back as built: on the CPU, in
    train mode. ``config`` is taken, not read, so the caller can check it first (against
    the tokenizer) without reading the weights.
    """
    model = TinyLLM(config)
    tensors = load_checked_tensors(Path(directory) / WEIGHTS_FILE, llama_weight_shapes(model))
    model.load_state_dict(tensors, strict=False)  # strict checking was done above
    return model


def llama_weight_shapes(model: TinyLLM) -> dict[str, tuple[int, ...]]:
    """The key and shape of every tensor ``model.safetensors`` holds for ``model``."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        del expected["lm_head.weight"]  # shares embed_tokens' tensor, loaded through it
    return expected
