"""bitsandbytes' 4-bit checkpoint: the folder transformers saves for a model loaded in 4 bits.

A model with ``quant.Linear4bit`` layers is saved as a Llama folder (``formats.hf_llama``)
whose 4-bit weights are stored the way ``bitsandbytes.nn.Linear4bit`` stores its own, so
``AutoModelForCausalLM.from_pretrained(folder)`` loads it in 4 bits, and a folder saved
that way by transformers loads here. Nothing is quantized again on either side: the
codes and statistics on disk are the ones the layers compute with.

For the layer at module path ``P`` the weight becomes several tensors, all under
``P.weight`` (transformers saves each layer's ``QuantState.as_dict(packed=True)`` there):

- ``P.weight``: the packed codes, a ``[numel / 2, 1]`` uint8 column, two codes a byte;
- ``P.weight.absmax``: one scale per block (uint8 codes with double quantization, else
  float32), and ``P.weight.quant_map``: the 16 levels (NF4's or FP4's);
- with double quantization, ``P.weight.nested_absmax`` (float32, one per block of 256
  absmax codes) and ``P.weight.nested_quant_map`` (the 8-bit dynamic map);
- ``P.weight.quant_state.bitsandbytes__nf4`` (or ``__fp4``): what is not a tensor, the
  type, block size, dtype, shape and the mean subtracted from the absmax values
  (``nested_offset``), as JSON text in a uint8 tensor, since safetensors holds only
  tensors. Its bytes are ``json.dumps``' with default settings, bitsandbytes' bytes.

``config.json`` gets the ``quantization_config`` that ``BitsAndBytesConfig(load_in_4bit=True,
...).to_dict()`` gives; its ``llm_int8_skip_modules`` lists the linear layers left in full
precision, so that transformers quantizes the same ones (left out, transformers keeps
only ``lm_head``). One quant type and one double-quantization setting hold for the whole
model; the block size is each layer's own (it is in the JSON).

What cannot be saved this way is refused, not approximated: Int4 (``quant``'s comparison
type, which bitsandbytes does not have), and LoRA on a 4-bit model, whose merge would mean
quantizing again (save the adapter alone; merge into the full-precision base). On load,
a part missing, a size that does not match the shape or the block size, bad JSON or an
unknown type is an error naming the tensor and the file.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import ModelConfig
from ..files import checked_field, load_checked_tensors, read_json_object
from ..lora import MERGE_INTO_FULL_PRECISION, OUTPUT_LAYER, lora_layers
from ..model import TinyLLM
from ..quant import (
    BLOCKSIZES,
    NESTED_BLOCKSIZE,
    Linear4bit,
    QuantizedTensor,
    linear4bit_layers,
)
from .hf_llama import CONFIG_FILE, WEIGHTS_FILE, llama_files, llama_weight_shapes

QUANT_TYPES = ("nf4", "fp4")
"""The 4-bit types bitsandbytes stores (``quant``'s Int4 is not one)."""
QUANT_STATE = "quant_state.bitsandbytes__"
"""The JSON tensor's key after ``P.weight.``, completed by the quant type."""

# BitsAndBytesConfig's fields for 8-bit loading, at their defaults: 4-bit ignores them.
INT8_DEFAULTS: dict[str, Any] = {
    "llm_int8_threshold": 6.0, "llm_int8_enable_fp32_cpu_offload": False,
    "llm_int8_has_fp16_weight": False,
}
# What BitsAndBytesConfig uses for a field a file leaves out.
BNB_DEFAULTS: dict[str, Any] = {
    "load_in_4bit": False, "load_in_8bit": False, "bnb_4bit_quant_type": "fp4",
    "bnb_4bit_use_double_quant": False, "bnb_4bit_quant_storage": "uint8",
    "llm_int8_skip_modules": None,
}


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"``: how bitsandbytes and transformers write a dtype."""
    return str(dtype).removeprefix("torch.")


FLOAT_DTYPES = {dtype_name(d): d for d in (torch.float32, torch.float16, torch.bfloat16)}
"""The weight dtypes a 4-bit layer may stand for, by the names bitsandbytes writes."""


# ----------------------------------------------------------------------------- saving


def quant_state_dict(q: QuantizedTensor, prefix: str) -> dict[str, torch.Tensor]:
    """The tensors bitsandbytes saves ``q`` as, keyed ``prefix`` (``P.weight``) and
    ``prefix.<part>``: what ``QuantState.as_dict(packed=True)`` holds, plus the codes."""
    if q.quant_type not in QUANT_TYPES:
        raise ValueError(
            f"{prefix}: quant_type {q.quant_type!r} has no bitsandbytes layout (it stores "
            f"{' and '.join(QUANT_TYPES)}; Int4 is here for comparison only)")
    info: dict[str, Any] = {"quant_type": q.quant_type, "blocksize": q.blocksize,
                            "dtype": dtype_name(q.dtype), "shape": list(q.shape)}
    # The level tables are shared by every layer in memory (quant.CODES, DYNAMIC_MAP);
    # the file holds a copy per layer, as bitsandbytes writes it (8.5 KiB a layer).
    tensors = {prefix: q.packed, f"{prefix}.absmax": q.absmax,
               f"{prefix}.quant_map": q.code.clone()}
    if q.double_quant:
        tensors[f"{prefix}.nested_absmax"] = q.nested_absmax
        tensors[f"{prefix}.nested_quant_map"] = q.nested_code.clone()
        info.update(nested_blocksize=NESTED_BLOCKSIZE,
                    nested_dtype=dtype_name(q.nested_absmax.dtype),
                    nested_offset=q.offset.item())  # float32 -> float -> float32 is exact
    text = json.dumps(info).encode("utf-8")  # json.dumps' defaults: bitsandbytes' bytes
    tensors[f"{prefix}.{QUANT_STATE}{q.quant_type}"] = torch.frombuffer(
        bytearray(text), dtype=torch.uint8)
    return tensors


def quantization_config(quant_type: str, double_quant: bool, compute_dtype: torch.dtype,
                        skip_modules: list[str]) -> dict[str, Any]:
    """``config.json``'s ``quantization_config``, as ``BitsAndBytesConfig(load_in_4bit=True,
    bnb_4bit_quant_type=..., bnb_4bit_use_double_quant=..., bnb_4bit_compute_dtype=...,
    llm_int8_skip_modules=...).to_dict()`` gives it."""
    return {
        "quant_method": "bitsandbytes", "_load_in_8bit": False, "_load_in_4bit": True,
        **INT8_DEFAULTS, "llm_int8_skip_modules": skip_modules,
        "bnb_4bit_quant_type": quant_type, "bnb_4bit_use_double_quant": double_quant,
        "bnb_4bit_compute_dtype": dtype_name(compute_dtype), "bnb_4bit_quant_storage": "uint8",
        "load_in_4bit": True, "load_in_8bit": False,
    }


def bnb_4bit_files(model: TinyLLM) -> dict[str, bytes]:
    """``config.json`` and ``model.safetensors`` for a model with ``Linear4bit`` layers.

    The plain tensors (embeddings, norms, layers left in full precision) are saved as
    ``formats.hf_llama`` saves them; each 4-bit layer's buffers are replaced by its
    bitsandbytes tensors (``quant_state_dict``).
    """
    adapted = lora_layers(model)
    if adapted:
        raise ValueError(
            f"save_pretrained: {adapted[0][0]} is a LoRA layer on a 4-bit model; a merged "
            "model would have to be quantized again. Save the adapter alone "
            f"(formats.peft_adapter.save_adapter). {MERGE_INTO_FULL_PRECISION}")
    layers = linear4bit_layers(model)
    first_path, first = layers[0][0], layers[0][1].quantized()
    state = model.state_dict()
    for path, layer in layers:
        q = layer.quantized()
        parts = quant_state_dict(q, f"{path}.weight")
        if (q.quant_type, q.double_quant) != (first.quant_type, first.double_quant):
            raise ValueError(
                f"save_pretrained: {path} is {q.quant_type} (double_quant={q.double_quant}) "
                f"but {first_path} is {first.quant_type} (double_quant={first.double_quant});"
                " bitsandbytes' quantization_config holds one setting for every layer")
        for name in q.tensors():
            del state[f"{path}.{name}"]
        state.update(parts)
    full_precision = [path for path, m in model.named_modules() if isinstance(m, nn.Linear)]
    config = quantization_config(first.quant_type, first.double_quant, first.dtype,
                                 full_precision)
    return llama_files(model, state, config)


# ----------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class Bnb4bitConfig:
    """What loading needs of ``quantization_config``: the 4-bit type, whether the absmax
    values are double-quantized, and transformers' patterns of the linear layers left in
    full precision (``None``: every one but ``lm_head``)."""

    quant_type: str
    double_quant: bool
    skip_modules: tuple[str, ...] | None


def read_bnb_4bit_config(directory: str | Path) -> Bnb4bitConfig | None:
    """The 4-bit settings in ``directory``'s ``config.json``; ``None`` for a plain model.

    Only bitsandbytes' 4-bit storage is read: 8-bit (LLM.int8), another quantization
    method or a packing dtype other than uint8 is refused, naming the field. The compute
    dtype is not needed: ``Linear4bit`` computes in its input's dtype.
    """
    path = Path(directory) / CONFIG_FILE
    data = read_json_object(path).get("quantization_config")
    if data is None:
        return None
    where = f"{path}: quantization_config"
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object, got {data!r}")
    if data.get("quant_method") != "bitsandbytes":
        raise ValueError(f"{where}: only quant_method 'bitsandbytes' is read here, got "
                         f"{data.get('quant_method')!r}")
    values = {**BNB_DEFAULTS, **data}
    if (not checked_field(values, "load_in_4bit", bool, where)
            or checked_field(values, "load_in_8bit", bool, where)):
        raise ValueError(f"{where}: only load_in_4bit is read here (8-bit is LLM.int8())")
    quant_type = values["bnb_4bit_quant_type"]
    if quant_type not in QUANT_TYPES:
        raise ValueError(f"{where}: unknown bnb_4bit_quant_type {quant_type!r} "
                         f"(bitsandbytes' 4-bit types: {list(QUANT_TYPES)})")
    if values["bnb_4bit_quant_storage"] != "uint8":
        raise ValueError(f"{where}: bnb_4bit_quant_storage must be 'uint8' (two codes a "
                         f"byte), got {values['bnb_4bit_quant_storage']!r}")
    skip = values["llm_int8_skip_modules"]
    if skip is not None and not (isinstance(skip, list)
                                 and all(isinstance(s, str) for s in skip)):
        raise ValueError(f"{where}: llm_int8_skip_modules must be a list of names, got {skip!r}")
    double_quant = checked_field(values, "bnb_4bit_use_double_quant", bool, where)
    return Bnb4bitConfig(quant_type, double_quant, None if skip is None else tuple(skip))


def _skipped(path: str, patterns: Sequence[str]) -> bool:
    """Whether transformers leaves the linear at ``path`` in full precision: a pattern
    (a regular expression) matches it from the start up to a module boundary, so
    ``model.layers.1`` is not ``model.layers.11``, or the path ends with the pattern."""
    return any(re.match(rf"(?:{p})(?:(?<=\.)|(?=\.|$))", path) or path.endswith(p)
               for p in patterns)


def quantized_paths(model: TinyLLM, settings: Bnb4bitConfig) -> list[str]:
    """The linear layers of ``model`` that ``settings`` says are stored in 4 bits."""
    patterns = (OUTPUT_LAYER,) if settings.skip_modules is None else settings.skip_modules
    return [path for path, m in model.named_modules()
            if isinstance(m, nn.Linear) and not _skipped(path, patterns)]


def _expected_parts(prefix: str, numel: int,
                    settings: Bnb4bitConfig) -> dict[str, tuple[int, ...] | None]:
    """Keys and shapes of one 4-bit weight; ``None`` where the block size (in the JSON)
    decides, checked by ``read_quant_state``."""
    parts: dict[str, tuple[int, ...] | None] = {
        prefix: ((numel + 1) // 2, 1), f"{prefix}.absmax": None, f"{prefix}.quant_map": (16,),
        f"{prefix}.{QUANT_STATE}{settings.quant_type}": None,
    }
    if settings.double_quant:
        parts.update({f"{prefix}.nested_absmax": None, f"{prefix}.nested_quant_map": (256,)})
    return parts


def _quant_state_json(tensor: torch.Tensor, where: str, fields: set[str]) -> dict[str, Any]:
    """The JSON object a quant_state tensor holds, with exactly ``fields``."""
    try:
        info = json.loads(tensor.numpy().tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{where}: not valid JSON text ({err})") from None
    if not isinstance(info, dict) or set(info) != fields:
        found = sorted(info) if isinstance(info, dict) else info
        raise ValueError(f"{where}: expected a JSON object with fields {sorted(fields)}, "
                         f"got {found!r}")
    return info


def _check_length(tensor: torch.Tensor, count: int, where: str, why: str) -> None:
    if tuple(tensor.shape) != (count,):
        raise ValueError(f"{where}: shape {list(tensor.shape)}, expected [{count}] ({why})")


def read_quant_state(parts: dict[str, torch.Tensor], prefix: str, settings: Bnb4bitConfig,
                     shape: tuple[int, int], path: Path) -> QuantizedTensor:
    """The ``QuantizedTensor`` stored as ``parts`` (``_expected_parts``' keys, shapes
    fixed by the model already checked), for a layer of weight shape ``shape``.

    Every size the JSON implies is checked against the tensors: the shape against the
    model's, one absmax per block, one nested absmax per 256 of them.
    """
    state_key = f"{prefix}.{QUANT_STATE}{settings.quant_type}"
    dtypes = {prefix: torch.uint8, f"{prefix}.quant_map": torch.float32,
              f"{prefix}.absmax": torch.uint8 if settings.double_quant else torch.float32,
              f"{prefix}.nested_absmax": torch.float32,
              f"{prefix}.nested_quant_map": torch.float32, state_key: torch.uint8}
    for key, tensor in parts.items():
        if tensor.dtype != dtypes[key]:
            raise ValueError(f"{path}: '{key}' is {dtype_name(tensor.dtype)}, "
                             f"expected {dtype_name(dtypes[key])}")
    where = f"{path}: '{state_key}'"
    fields = {"quant_type", "blocksize", "dtype", "shape"}
    if settings.double_quant:
        fields |= {"nested_blocksize", "nested_dtype", "nested_offset"}
    info = _quant_state_json(parts[state_key], where, fields)
    if info["quant_type"] != settings.quant_type:
        known = "" if info["quant_type"] in QUANT_TYPES else "unknown "
        raise ValueError(f"{where}: {known}quant_type {info['quant_type']!r}, but the key and "
                         f"config.json say {settings.quant_type!r}")
    if info["dtype"] not in FLOAT_DTYPES:
        raise ValueError(f"{where}: dtype {info['dtype']!r} is not one of {list(FLOAT_DTYPES)}")
    if info["shape"] != list(shape):
        raise ValueError(f"{where}: shape {info['shape']!r} does not match the model's layer, "
                         f"{list(shape)}")
    blocksize = checked_field(info, "blocksize", int, where)
    if blocksize not in BLOCKSIZES:
        raise ValueError(f"{where}: blocksize must be one of {list(BLOCKSIZES)}, got {blocksize}")
    blocks = math.ceil(math.prod(shape) / blocksize)
    _check_length(parts[f"{prefix}.absmax"], blocks, f"{path}: '{prefix}.absmax'",
                  f"one per block of {blocksize} of a {list(shape)} weight")
    q = QuantizedTensor(parts[prefix], parts[f"{prefix}.absmax"], parts[f"{prefix}.quant_map"],
                        torch.Size(shape), FLOAT_DTYPES[info["dtype"]], blocksize,
                        settings.quant_type)
    if settings.double_quant:
        if (info["nested_blocksize"], info["nested_dtype"]) != (NESTED_BLOCKSIZE, "float32"):
            raise ValueError(f"{where}: nested_blocksize and nested_dtype must be "
                             f"{NESTED_BLOCKSIZE} and 'float32', got "
                             f"{info['nested_blocksize']!r} and {info['nested_dtype']!r}")
        q.nested_absmax = parts[f"{prefix}.nested_absmax"]
        _check_length(q.nested_absmax, math.ceil(blocks / NESTED_BLOCKSIZE),
                      f"{path}: '{prefix}.nested_absmax'",
                      f"one per {NESTED_BLOCKSIZE} of the {blocks} absmax codes")
        q.nested_code = parts[f"{prefix}.nested_quant_map"]
        offset = checked_field(info, "nested_offset", float, where)
        q.offset = torch.tensor(offset, dtype=torch.float32)
    return q


def read_bnb_4bit_model(directory: str | Path, config: ModelConfig,
                        settings: Bnb4bitConfig) -> TinyLLM:
    """A ``TinyLLM(config)`` whose 4-bit layers are ``Linear4bit`` built from the stored
    codes and statistics, the rest loaded as ``hf_llama.read_llama_model`` loads it.

    Every key and the shapes the model fixes are checked before any layer is built. The
    model comes back as built: on the CPU, in train mode.
    """
    path = Path(directory) / WEIGHTS_FILE
    model = TinyLLM(config)
    expected = llama_weight_shapes(model)
    layers = {p: model.get_submodule(p) for p in quantized_paths(model, settings)}
    part_shapes = {p: _expected_parts(f"{p}.weight", linear.weight.numel(), settings)
                   for p, linear in layers.items()}
    for p, shapes in part_shapes.items():
        del expected[f"{p}.weight"]
        expected.update(shapes)
    tensors = load_checked_tensors(path, expected)
    for p, linear in layers.items():
        parts = {key: tensors.pop(key) for key in part_shapes[p]}
        shape = (linear.out_features, linear.in_features)
        q = read_quant_state(parts, f"{p}.weight", settings, shape, path)
        model.set_submodule(p, Linear4bit(q))
    model.load_state_dict(tensors, strict=False)  # the plain tensors left; checked above
    return model
