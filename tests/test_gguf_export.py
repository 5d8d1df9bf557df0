"""GGUF out: ``write_gguf`` and ``tinyllm export``, checked against independent readers.

Our Q8_0 quantizer against gguf's (bit for bit); the shipped base exported at F32, F16 and
Q8_0 and read back by our reader and by transformers' GGUF loader; SmolLM2 exported at
Q8_0 and read back by both; the exported tokenizers; the command end to end with an
adapter. The base is small (4096 x 256, 5 layers), so its files are written once per
module; SmolLM2 (135M parameters) is exported once.
"""

import dataclasses
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from tinyllm_lib.checkpoint import SMOLLM2, load_pretrained
from tinyllm_lib.cli import main
from tinyllm_lib.config import BASE_DIR, LoRAConfig
from tinyllm_lib.formats import gguf as gguf_format
from tinyllm_lib.formats.gguf import (
    dequantize_q8_0,
    gguf_metadata,
    gguf_tensor_name,
    llama_tensor_name,
    open_gguf,
    quantize_q8_0,
    read_gguf_model,
    rope_permutation,
    undo_rope_permutation,
    write_gguf,
)
from tinyllm_lib.formats.hf_tokenizer import (
    DIGITS_ALONE,
    GPT2_SPLIT,
    OWN_PATTERN_KEY,
    vocabulary_from_gguf,
)
from tinyllm_lib.formats.peft_adapter import save_adapter
from tinyllm_lib.lora import apply_lora, merged_state_dict
from tinyllm_lib.tokenizer import Tokenizer

Q = gguf.GGMLQuantizationType
TEXT = ("Hello, world! The 3 cats ate 1024 fish.\n\n  Indented\tline: x = y + 2;  "
        "你好，世界。Zoë naïve café 😀👍 end")
CHAT = "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"


def ids(length: int, vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (1, length), generator=torch.Generator().manual_seed(seed))


def logits(model, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(input_ids)
    return getattr(out, "logits", out)


def transformers_model(path: Path):
    return AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32).eval()


def file_tokenizer(path: Path) -> Tokenizer:
    """The file's tokenizer, read without the metadata cache (these files are temporary)."""
    return Tokenizer.from_vocabulary(vocabulary_from_gguf(gguf_metadata(path, None), path))


# ------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def base():
    return load_pretrained(BASE_DIR, device="cpu")


@pytest.fixture(scope="module")
def base_files(base, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("base-gguf")
    model, tokenizer = base
    return {dtype: write_gguf(model, tokenizer, folder / f"base-{dtype}.gguf", dtype)
            for dtype in ("f32", "f16", "q8_0")}


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    model, tokenizer = load_pretrained(SMOLLM2, device="cpu")
    path = write_gguf(model, tokenizer, tmp_path_factory.mktemp("smol") / "smol-q8_0.gguf",
                      "q8_0")
    return model, tokenizer, path


# ------------------------------------------------------------------ the pieces, one by one


def test_quantize_q8_0_matches_gguf_bit_for_bit():
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((16, 256)).astype(np.float32) * np.logspace(-6, 4, 16)[:, None]
    rows[0] = 0  # all-zero blocks: d = 0
    rows[1, :32] = 0
    rows[1, 5] = -3.0  # one value in a block: it becomes -127 exactly
    rows[2, :32] = np.arange(-16, 16) * 127 / 31  # x * (1/d) lands on and near halves
    rows[2, 32:64] = (np.arange(32) + 0.5) * (3.0 / 127)
    rows[3, :32] = 65504.0 * rng.choice([-1, 1], 32)  # float16's largest value
    rows[4, :32] = 1e-9  # d far below float16's smallest: stored as 0
    rows[5] = rng.integers(-127, 128, 256)
    mine = quantize_q8_0(rows)
    reference = gguf.quants.quantize(rows, Q.Q8_0)
    assert mine.dtype == np.uint8 and mine.shape == reference.shape == (16, 8 * 34)
    np.testing.assert_array_equal(mine, reference)
    # and the layout is dequantize_q8_0's: an error is at most half a step, plus d's rounding
    back = dequantize_q8_0(mine.reshape(-1)).reshape(rows.shape)
    np.testing.assert_array_equal(back, gguf.quants.dequantize(reference, Q.Q8_0))
    d = np.abs(rows.reshape(-1, 32)).max(axis=1, keepdims=True) / 127
    normal = (d[:, 0] > 1e-3) & (d[:, 0] < 1000)  # where float16 holds d to 11 bits
    error = np.abs(back - rows).reshape(-1, 32)[normal]
    assert (error <= 0.5 * d[normal] + 127 * d[normal] * 2.0**-11).all()


def test_quantize_q8_0_refuses_rows_of_partial_blocks():
    with pytest.raises(ValueError, match="rows of 40 are not whole Q8_0 blocks of 32"):
        quantize_q8_0(np.zeros((2, 40), np.float32))


def test_rope_permutation_is_the_converters_and_undone_exactly():
    weight = np.arange(12 * 3, dtype=np.float32).reshape(12, 3)  # 2 heads of 6 dims
    permuted = rope_permutation(weight, 2)
    assert permuted[:, 0].tolist() == [0, 9, 3, 12, 6, 15, 18, 27, 21, 30, 24, 33]
    np.testing.assert_array_equal(undo_rope_permutation(permuted, 2), weight)
    big = np.random.default_rng(1).standard_normal((576, 64)).astype(np.float32)
    for heads in (9, 3):
        np.testing.assert_array_equal(undo_rope_permutation(rope_permutation(big, heads),
                                                            heads), big)
        np.testing.assert_array_equal(rope_permutation(undo_rope_permutation(big, heads),
                                                       heads), big)


def test_tensor_names_invert_the_readers(base):
    model, _ = base
    for name in model.state_dict():
        assert llama_tensor_name(gguf_tensor_name(name)) == name
    assert gguf_tensor_name("model.layers.3.self_attn.q_proj.weight") == "blk.3.attn_q.weight"
    with pytest.raises(ValueError, match="model.layers.0.rope: not a weight"):
        gguf_tensor_name("model.layers.0.rope")


# ------------------------------------------------------------------------ the shipped base


def same_config(read, original):
    """The config the file gives: the same model, its eps rounded to float32 (GGUF's)."""
    c = original.config
    assert read.config == dataclasses.replace(
        c, num_kv_heads=read.config.num_kv_heads, intermediate_size=read.config.intermediate_size,
        rms_norm_eps=float(np.float32(c.rms_norm_eps)))
    assert (read.config.kv_heads, read.config.mlp_size) == (c.kv_heads, c.mlp_size)


def test_base_f32_reads_back_bit_identically_here_and_in_transformers(base, base_files):
    model, _ = base
    path = base_files["f32"]
    read = read_gguf_model(path, cache_dir=None).eval()
    same_config(read, model)
    for key, value in model.state_dict().items():
        assert torch.equal(read.state_dict()[key], value), key
    reader = open_gguf(path)
    names = {t.name: t.tensor_type for t in reader.tensors}
    assert "output.weight" not in names and names["token_embd.weight"] == Q.F32  # tied head
    theirs = transformers_model(path)
    worst = 0.0
    for length in (1, 9, 64, 256):
        x = ids(length, model.config.vocab_size, length)
        assert torch.equal(logits(read, x), logits(model, x))
        worst = max(worst, (logits(theirs, x) - logits(model, x)).abs().max().item())
    print(f"base f32: transformers' logits within {worst:.2e} of ours")
    # The weights are bit-identical; what is left is float32 summation order (PyTorch's
    # attention kernels against ours), which grows with the length: 1e-5 at 50 tokens,
    # 3.1e-5 at 256 when measured.
    assert worst < 5e-5


@pytest.mark.parametrize("dtype, kind, file_type, bound", [
    ("f16", Q.F16, 1, 0.02), ("q8_0", Q.Q8_0, 7, 0.5),
])
def test_base_f16_and_q8_0_read_back_as_their_dequantized_values(
    base, base_files, dtype, kind, file_type, bound
):
    model, _ = base
    path = base_files[dtype]
    read = read_gguf_model(path, cache_dir=None).eval()
    for key, value in model.state_dict().items():
        if value.ndim == 1:  # the norms stay float32, as llama.cpp's converter keeps them
            expected = value
        elif dtype == "f16":
            expected = value.half().float()
        else:  # blocks lie within rows, so q/k's row order does not change their values
            expected = torch.from_numpy(dequantize_q8_0(quantize_q8_0(value.numpy()).reshape(-1))
                                        ).reshape(value.shape)
        assert torch.equal(read.state_dict()[key], expected), key
    reader = open_gguf(path)
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["blk.0.attn_norm.weight"] == types["output_norm.weight"] == Q.F32
    assert types["token_embd.weight"] == types["blk.4.ffn_down.weight"] == kind
    assert gguf_metadata(path, None)["general.file_type"] == file_type
    x = ids(64, model.config.vocab_size)
    difference = (logits(read, x) - logits(model, x)).abs().max().item()
    print(f"base {dtype}: logits within {difference:.4f} of the f32 model's")
    assert 0 < difference < bound


def test_base_metadata_has_every_key_the_reader_reads(base, base_files):
    model, _ = base
    metadata = gguf_metadata(base_files["f16"], None)
    c = model.config
    assert {k: v for k, v in metadata.items() if k.startswith("llama.")} == {
        "llama.vocab_size": 4096, "llama.embedding_length": 256, "llama.block_count": 5,
        "llama.attention.head_count": 4, "llama.attention.head_count_kv": 4,
        "llama.feed_forward_length": 704, "llama.context_length": 256,
        "llama.rope.freq_base": 10000.0, "llama.rope.dimension_count": 64,
        "llama.attention.layer_norm_rms_epsilon": float(np.float32(c.rms_norm_eps)),
    }
    assert metadata["general.architecture"] == "llama"
    assert metadata["tokenizer.ggml.model"] == "gpt2"
    assert metadata["tokenizer.ggml.pre"] == "smollm"
    assert metadata["tokenizer.ggml.add_bos_token"] is False
    assert metadata["tokenizer.ggml.tokens"][256:260] == [
        "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
    assert metadata["tokenizer.ggml.tokens"][32] == "Ġ"  # the space byte, GPT-2's spelling
    assert metadata["tokenizer.ggml.token_type"][250:262] == [1] * 6 + [3] * 4 + [1] * 2
    assert metadata["tokenizer.ggml.eos_token_id"] == 256
    assert metadata["tokenizer.ggml.padding_token_id"] == 259
    assert "<|im_start|>" in metadata["tokenizer.chat_template"]


def test_base_tokenizer_reads_back_to_the_same_ids(base, base_files):
    _, tokenizer = base
    mine = file_tokenizer(base_files["f32"])
    text = TEXT + " it's 'really' x² a\x1cb"
    assert mine.encode(text) == tokenizer.encode(text)
    specials = tuple(tokenizer.special_tokens)
    assert mine.encode(CHAT, allowed_special=specials) == tokenizer.encode(
        CHAT, allowed_special=specials)
    assert mine.decode(tokenizer.encode(text)) == text


def test_llama_cpps_reading_of_our_pattern_is_close_not_exact(base, base_files):
    """What ``tokenizer.ggml.pre = "smollm"`` gives a tool that ignores OWN_PATTERN_KEY:
    the same ids on ordinary text, other ids where GPT-2 splits off a contraction."""
    _, tokenizer = base
    vocabulary = tokenizer.vocabulary
    metadata = gguf_metadata(base_files["f32"], None)
    assert metadata[OWN_PATTERN_KEY] == tokenizer.pattern
    as_llama_cpp = Tokenizer.from_vocabulary(dataclasses.replace(
        vocabulary, split_patterns=(DIGITS_ALONE, GPT2_SPLIT), pattern_syntax="regex"))
    assert as_llama_cpp.encode(TEXT) == tokenizer.encode(TEXT)
    assert tokenizer.encode("'the book'") == [39, 2284, 1374, 39]  # ' the book '
    assert as_llama_cpp.encode("'the book'") == [39, 116, 281, 1374, 39]  # 't he book '


def test_write_errors_are_clear_and_leave_the_old_file(base, tmp_path, monkeypatch):
    model, tokenizer = base
    with pytest.raises(ValueError, match=r"dtype 'q4_0' is not one of \['f16', 'f32', 'q8_0'\]"):
        write_gguf(model, tokenizer, tmp_path / "x.gguf", "q4_0")
    path = tmp_path / "old.gguf"
    path.write_bytes(b"the old file")

    def broken(values):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(gguf_format, "quantize_q8_0", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_gguf(model, tokenizer, path, "q8_0")
    assert path.read_bytes() == b"the old file"
    assert [p.name for p in tmp_path.iterdir()] == ["old.gguf"]  # no temporary file left


def test_a_model_with_unmerged_lora_is_refused(tmp_path):
    model, tokenizer = load_pretrained(BASE_DIR, device="cpu")
    apply_lora(model, LoRAConfig(rank=2))
    with pytest.raises(ValueError, match="model.layers.0.self_attn.q_proj has a LoRA update "
                                         "that is not merged .10 layers.; call merge_lora"):
        write_gguf(model, tokenizer, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


# ------------------------------------------------------------------------------- SmolLM2


def test_smollm2_q8_0_reads_back_alike_in_transformers_and_here(smol):
    model, tokenizer, path = smol
    ours = read_gguf_model(path, cache_dir=None).eval()
    theirs = transformers_model(path)
    x = ids(23, 49152)
    mine = logits(ours, x)
    difference = (logits(theirs, x) - mine).abs().max().item()
    moved = (mine - logits(model, x)).abs().max().item()
    print(f"SmolLM2 q8_0: transformers within {difference:.2e} of our reading; "
          f"requantizing Q4_1's values to Q8_0 moved the logits by {moved:.3f}")
    assert difference < 5e-4
    assert moved < 1.0


def test_smollm2_tokenizer_reads_back_to_the_same_ids(smol):
    _, tokenizer, path = smol
    metadata = gguf_metadata(path, None)
    assert metadata["tokenizer.ggml.pre"] == "smollm" and OWN_PATTERN_KEY not in metadata
    original = gguf_metadata(gguf_format.find_smollm2())
    for key in ("tokens", "token_type", "merges", "bos_token_id", "eos_token_id"):
        assert metadata[f"tokenizer.ggml.{key}"] == original[f"tokenizer.ggml.{key}"], key
    mine = file_tokenizer(path)
    text = TEXT + " it's  1 x² a\x1cb"
    assert mine.encode(text) == tokenizer.encode(text)
    specials = tuple(tokenizer.special_tokens)
    assert mine.encode(CHAT, allowed_special=specials) == tokenizer.encode(
        CHAT, allowed_special=specials)


# ------------------------------------------------------------------------- tinyllm export


@pytest.fixture(scope="module")
def adapted(tmp_path_factory):
    """The base with a small random adapter saved as ``tinyllm train`` saves one."""
    model, _ = load_pretrained(BASE_DIR, device="cpu")
    torch.manual_seed(0)
    apply_lora(model, LoRAConfig(rank=4, target_modules=("q_proj", "v_proj", "down_proj")))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    folder = tmp_path_factory.mktemp("adapter")
    save_adapter(model, folder / "adapter")
    return model.eval(), folder / "adapter"


def test_export_merges_the_adapter_into_a_folder_and_a_gguf(adapted, tmp_path, capsys):
    model, adapter = adapted
    out, file = tmp_path / "merged", tmp_path / "merged.gguf"
    assert main(["export", "--adapter", str(adapter), "--merge-adapter", "--out", str(out),
                 "--gguf", str(file), "--gguf-type", "f32"]) == 0
    assert f"wrote {file}" in capsys.readouterr().out
    x = ids(40, 4096)
    expected = logits(model, x)
    base, _ = load_pretrained(BASE_DIR, device="cpu")
    assert (logits(base, x) - expected).abs().max() > 0.1  # the adapter does change them
    folder, _ = load_pretrained(out, device="cpu")
    torch.testing.assert_close(logits(folder, x), expected, rtol=0, atol=1e-4)
    read = read_gguf_model(file, cache_dir=None).eval()
    torch.testing.assert_close(logits(read, x), logits(folder, x), rtol=0, atol=0)
    merged = merged_state_dict(model)  # the same fold (W + scale * B @ A), done here
    for key, value in folder.state_dict().items():
        assert torch.equal(value, merged[key]), key


def test_export_gguf_defaults_to_f16(tmp_path):
    file = tmp_path / "base.gguf"
    assert main(["export", "--gguf", str(file)]) == 0
    assert gguf_metadata(file, None)["general.file_type"] == 1
    assert {t.tensor_type for t in open_gguf(file).tensors} == {Q.F16, Q.F32}


@pytest.mark.parametrize("flags, named", [
    ([], "--out DIR, --gguf FILE"),
    (["--adapter", "ADAPTER", "--out", "OUT"], "argument --adapter"),
    (["--merge-adapter", "--out", "OUT"], "argument --merge-adapter"),
    (["--out", "OUT", "--gguf-type", "f32"], "argument --gguf-type"),
    (["--gguf", "F.gguf", "--gguf-type", "q4_0"], "argument --gguf-type"),
    (["--model", "MISSING", "--out", "OUT"], "argument --model"),
    (["--adapter", "MISSING", "--merge-adapter", "--out", "OUT"], "argument --adapter"),
])
def test_bad_export_flags_exit_2_naming_the_flag(adapted, tmp_path, capsys, flags, named):
    where = {"ADAPTER": str(adapted[1]), "OUT": str(tmp_path / "out"),
             "F.gguf": str(tmp_path / "f.gguf"), "MISSING": str(tmp_path / "missing")}
    argv = ["export", *(where.get(flag, flag) for flag in flags)]
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        status = exit_.code
    assert status == 2
    assert named in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing written
