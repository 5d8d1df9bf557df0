"""Tests for the byte-level BPE tokenizer.

Training and encoding are checked against deliberately naive reference implementations
written here (recount every pair after every merge; apply merges one by one in order), so
the fast incremental code in the library must agree with the textbook algorithm.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyllm_lib.tokenizer import (
    FIRST_MERGE_ID,
    PRETOKENIZE_PATTERN,
    SPECIAL_TOKENS,
    Tokenizer,
)

ENGLISH = [
    "The little robot walked to the market on Monday morning.",
    "She bought 12 apples and 3 oranges for 45 coins.",
    "Alice lives in Paris; her brother lives in Tokyo!",
    "  Indented line with\ttabs and   several spaces.\n\nNew paragraph here.",
    "What is 17 + 25? The answer is 42.",
]
CHINESE = [
    "小明住在北京，他喜欢读书。",
    "我们今天去市场买了三个苹果。",
    "机器人在星期一早上走到了市场。",
    "问：十七加二十五等于多少？答：四十二。",
]
EMOJI = ["I love 🍎 and 🍊! 😀👍🏽", "天气很好 ☀️🌈"]
CORPUS = [f"{line} {k}" for k in range(30) for line in ENGLISH + CHINESE + EMOJI]

SAMPLE_TEXT = "The robot bought 7 apples. 小明喜欢苹果 🍎! <|im_end|> and_more  spaces"


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(CORPUS, 400)


# ------------------------------------------------------------------ references


def chunks_with_counts(texts: list[str]) -> Counter[tuple[int, ...]]:
    counts: Counter[tuple[int, ...]] = Counter()
    for text in texts:
        for chunk in re.findall(PRETOKENIZE_PATTERN, text):
            counts[tuple(chunk.encode("utf-8"))] += 1
    return counts


def fuse_left_to_right(word: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace non-overlapping occurrences of ``pair``, scanning left to right."""
    out: list[int] = []
    i = 0
    while i < len(word):
        if word[i : i + 2] == list(pair):
            out.append(new_id)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def naive_train(texts: list[str], vocab_size: int) -> list[tuple[int, int]]:
    """Textbook BPE: recount all pairs each step, take the most frequent (smallest ids on ties)."""
    current = [(list(word), count) for word, count in chunks_with_counts(texts).items()]
    merges: list[tuple[int, int]] = []
    while FIRST_MERGE_ID + len(merges) < vocab_size:
        pairs: Counter[tuple[int, int]] = Counter()
        for word, count in current:
            for a, b in zip(word, word[1:], strict=False):
                pairs[(a, b)] += count
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        if pairs[best] < 2:
            break
        new_id = FIRST_MERGE_ID + len(merges)
        merges.append(best)
        current = [(fuse_left_to_right(word, best, new_id), count) for word, count in current]
    return merges


def naive_encode(merges: list[tuple[int, int]], text: str) -> list[int]:
    """Apply every merge, in training order, to every chunk."""
    ids: list[int] = []
    for chunk in re.findall(PRETOKENIZE_PATTERN, text):
        word = list(chunk.encode("utf-8"))
        for k, pair in enumerate(merges):
            word = fuse_left_to_right(word, pair, FIRST_MERGE_ID + k)
        ids += word
    return ids


# ------------------------------------------------------------------ training


def test_training_matches_naive_bpe() -> None:
    texts = CORPUS[:40]
    assert Tokenizer.train(texts, 360).merges == naive_train(texts, 360)


def test_vocab_size_is_honoured(tok: Tokenizer) -> None:
    assert tok.vocab_size == len(tok) == 400
    assert len(tok.merges) == 400 - 256 - len(SPECIAL_TOKENS)
    assert max(tok.encode(" ".join(CORPUS))) < 400


def test_training_stops_when_no_pair_repeats() -> None:
    small = Tokenizer.train(["abcd abcd"], 1000)
    # Chunks "abcd" and " abcd". ab, bc, cd tie at 2: the smaller ids win, so ab; then cd
    # (99, 100) beats (ab, c) = (260, 99); then ab+cd. " abcd" occurs once: not worth a merge.
    assert [small.id_to_token_bytes(i) for i in range(FIRST_MERGE_ID, len(small))] == [
        b"ab",
        b"cd",
        b"abcd",
    ]


def test_too_small_vocab_is_rejected() -> None:
    with pytest.raises(ValueError, match="vocab_size=100"):
        Tokenizer.train(CORPUS, 100)


def test_merges_compress_training_text(tok: Tokenizer) -> None:
    text = "\n".join(CORPUS)
    n_bytes = len(text.encode("utf-8"))
    assert len(tok.encode(text)) < 0.6 * n_bytes


def test_training_is_deterministic(tmp_path: Path) -> None:
    Tokenizer.train(CORPUS, 400).save(tmp_path / "a.json")
    Tokenizer.train(CORPUS, 400).save(tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()


def test_training_does_not_depend_on_hash_seed(tmp_path: Path) -> None:
    script = (
        "import sys; from tinyllm_lib.tokenizer import Tokenizer; "
        "lines = sys.stdin.read().split('\\x00'); "
        "Tokenizer.train(lines, 400).save(sys.argv[1])"
    )
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = tmp_path / f"seed{seed}.json"
        subprocess.run(
            [sys.executable, "-c", script, str(out)],
            input="\x00".join(CORPUS),
            text=True,
            env=env,
            check=True,
        )
    assert (tmp_path / "seed1.json").read_bytes() == (tmp_path / "seed2.json").read_bytes()


# ------------------------------------------------------------------ encode / decode


def test_pretokenizer_chunks() -> None:
    assert re.findall(PRETOKENIZE_PATTERN, "Hi  there, 2024年 ok") == [
        "Hi",
        " ",
        " there",
        ",",
        " ",
        "2",
        "0",
        "2",
        "4",
        "年",
        " ok",
    ]


@given(st.text())
@settings(max_examples=200, deadline=None)
def test_pretokenizer_loses_no_character(text: str) -> None:
    assert "".join(re.findall(PRETOKENIZE_PATTERN, text)) == text


def test_encode_matches_naive_merge_order(tok: Tokenizer) -> None:
    for text in [*CORPUS[:20], SAMPLE_TEXT, "aaaaaaa bbbb 1111111 的的的的"]:
        assert tok.encode(text) == naive_encode(tok.merges, text)


mixed_text = st.lists(
    st.one_of(
        st.sampled_from(ENGLISH + CHINESE + EMOJI + list("🍎😀👍🏽中文的 \n\t<|>")),
        st.text(st.characters(codec="utf-8"), max_size=8),
    ),
    max_size=12,
).map("".join)


@given(mixed_text)
@settings(max_examples=200, deadline=None)
def test_decode_inverts_encode(tok: Tokenizer, text: str) -> None:
    assert tok.decode(tok.encode(text)) == text


@given(st.text(st.characters(codec="utf-8")))
@settings(max_examples=200, deadline=None)
def test_decode_inverts_encode_any_unicode(tok: Tokenizer, text: str) -> None:
    assert tok.decode(tok.encode(text)) == text


def test_lone_surrogate_is_rejected_with_its_position(tok: Tokenizer) -> None:
    with pytest.raises(ValueError, match=r"index 3 .*surrogate"):
        tok.encode("abc\ud800def")


def test_decode_of_a_split_character_does_not_crash(tok: Tokenizer) -> None:
    first_byte = "中".encode()[0]
    assert tok.decode([first_byte]) == "\ufffd"
    assert tok.decode([first_byte, ord("a")]) == "\ufffda"


def test_decode_rejects_unknown_ids(tok: Tokenizer) -> None:
    with pytest.raises(ValueError, match="token id 400"):
        tok.decode([1, 400])


def test_id_to_token_bytes(tok: Tokenizer) -> None:
    assert tok.id_to_token_bytes(65) == b"A"
    assert tok.id_to_token_bytes(tok.im_end_id) == b"<|im_end|>"
    for token_id in range(FIRST_MERGE_ID, len(tok)):
        a, b = tok.merges[token_id - FIRST_MERGE_ID]
        assert tok.id_to_token_bytes(token_id) == tok.id_to_token_bytes(a) + tok.id_to_token_bytes(
            b
        )


# ------------------------------------------------------------------ special tokens


def test_special_ids_layout(tok: Tokenizer) -> None:
    assert tok.special_tokens == {
        "<|endoftext|>": 256,
        "<|im_start|>": 257,
        "<|im_end|>": 258,
        "<|pad|>": 259,
    }
    assert (tok.eos_id, tok.im_start_id, tok.im_end_id, tok.pad_id) == (256, 257, 258, 259)


@given(st.lists(st.sampled_from([*SPECIAL_TOKENS, "user", "\n", "<|", "|>", "中"]), max_size=10))
@settings(max_examples=100, deadline=None)
def test_plain_text_never_yields_special_ids(tok: Tokenizer, pieces: list[str]) -> None:
    """ChatML injection: typing "<|im_end|>" must not end the turn."""
    text = "".join(pieces)
    ids = tok.encode(text)
    assert not set(ids) & set(tok.special_tokens.values())
    assert tok.decode(ids) == text


def test_allowed_special_maps_literal_to_id(tok: Tokenizer) -> None:
    text = "<|im_start|>user\nhi <|im_end|>\n"
    expected = [tok.im_start_id, *tok.encode("user\nhi "), tok.im_end_id, *tok.encode("\n")]
    assert tok.encode(text, allowed_special="all") == expected
    assert tok.encode(text, allowed_special=SPECIAL_TOKENS) == expected
    only_end = tok.encode(text, allowed_special={"<|im_end|>"})
    assert only_end == [*tok.encode("<|im_start|>user\nhi "), tok.im_end_id, *tok.encode("\n")]
    assert tok.decode(only_end) == text


@pytest.mark.parametrize("bad", ["<|im_end|>", ["<|im_end|>", "<|system|>"]])
def test_bad_allowed_special_is_rejected(tok: Tokenizer, bad: object) -> None:
    with pytest.raises(ValueError, match="allowed_special"):
        tok.encode("x", allowed_special=bad)  # type: ignore[arg-type]


# ------------------------------------------------------------------ save / load


def test_save_load_round_trip(tok: Tokenizer, tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    loaded = Tokenizer.load(path)
    assert loaded.merges == tok.merges
    assert loaded.special_tokens == tok.special_tokens
    for text in [*CORPUS[:10], SAMPLE_TEXT]:
        assert loaded.encode(text) == tok.encode(text)
    loaded.save(tmp_path / "again.json")
    assert (tmp_path / "again.json").read_bytes() == path.read_bytes()


def test_saved_file_is_hugging_face_tokenizer_json(tok: Tokenizer, tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["model"]["type"] == "BPE" and len(data["model"]["vocab"]) == len(tok)
    assert len(data["model"]["merges"]) == len(tok.merges)
    assert [(t["id"], t["content"], t["special"]) for t in data["added_tokens"]] == [
        (token_id, name, True) for name, token_id in tok.special_tokens.items()]
    assert data["model"]["vocab"]["\u0120lives"] >= FIRST_MERGE_ID  # " lives", GPT-2's spelling


LEGACY_FILE = Path(__file__).parent / "data" / "tokenizer-tinyllm-bpe-v1.json"
"""The shipped base's tokenizer as the project saved it before it wrote Hugging Face's
format (``tinyllm-bpe-v1``, the file of data/base until the real-model issue)."""
BASE_TOKENIZER = Path(__file__).parent.parent / "data" / "base" / "tokenizer.json"


def test_legacy_file_loads_as_the_same_tokenizer() -> None:
    old, new = Tokenizer.load(LEGACY_FILE), Tokenizer.load(BASE_TOKENIZER)
    assert json.loads(LEGACY_FILE.read_text(encoding="utf-8"))["format"] == "tinyllm-bpe-v1"
    assert old.vocabulary == new.vocabulary
    assert old.encode(SAMPLE_TEXT) == new.encode(SAMPLE_TEXT)


def test_pickle_round_trip(tok: Tokenizer) -> None:
    """DataLoader workers receive the tokenizer pickled; the chunk cache must not block that."""
    tok.encode(SAMPLE_TEXT)  # fill the cache
    copy = pickle.loads(pickle.dumps(tok))
    assert copy.merges == tok.merges
    assert copy.encode(SAMPLE_TEXT) == tok.encode(SAMPLE_TEXT)


def _corrupt(path: Path, edit: str) -> None:
    data = json.loads(LEGACY_FILE.read_text(encoding="utf-8"))
    if edit == "format":
        data["format"] = "gpt2"
    elif edit == "missing":
        del data["merges"]
    elif edit == "pair":
        data["merges"][5]["pair"] = [1]
    elif edit == "future-id":
        data["merges"][5]["pair"] = [1, 9999]
    elif edit == "duplicate":
        data["merges"][5]["pair"] = data["merges"][4]["pair"]
    elif edit == "token":
        data["merges"][5]["token"] = "nonsense"
    elif edit == "specials":
        data["special_tokens"] = {"<|endoftext|>": 0}
    path.write_text(json.dumps(data), encoding="utf-8")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ("format", "field 'format' is 'gpt2'"),
        ("missing", "missing field 'merges'"),
        ("pair", r"merges\[5\]: 'pair' must be two integer ids"),
        ("future-id", r"merge 265: \(1, 9999\) must name ids below 265"),
        ("duplicate", r"merge 265: .* repeats merge 264"),
        ("token", r"merges\[5\]: 'token' is 'nonsense'"),
        ("specials", "field 'special_tokens'"),
    ],
)
def test_malformed_legacy_file_error_names_file_and_fault(
    tmp_path: Path, edit: str, message: str
) -> None:
    path = tmp_path / "broken.json"
    _corrupt(path, edit)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*" + message):
        Tokenizer.load(path)


def test_invalid_json_error_names_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"format": "tinyllm-bpe-v1",', encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(str(path)) + ": line 1, column 29: invalid"):
        Tokenizer.load(path)
