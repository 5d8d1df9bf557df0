"""Byte-level BPE: train, encode, decode, save/load as JSON, special tokens.

Byte-level BPE starts from the 256 possible bytes, so every string has an encoding and
there is no "unknown token". Training repeatedly finds the most frequent adjacent pair of
tokens in the corpus and adds it to the vocabulary as a new token (a *merge*). Encoding
replays the merges in the order they were learned.

Id layout (the same for every vocabulary size)::

    0..255     the raw bytes
    256..259   <|endoftext|>, <|im_start|>, <|im_end|>, <|pad|>
    260..      the merges, in the order training learned them

Specials sit right after the bytes rather than at the end so that their ids are small,
fixed numbers: they read well in the book's printed id lists, and retraining with another
vocabulary size never moves them.

Pre-tokenisation: before BPE, text is cut into chunks by ``PRETOKENIZE_PATTERN`` and merges
never cross a chunk boundary, so a token never glues the end of one word to the start of the
next. The chunks are

* a run of letters with an optional leading space (``" cat"``): the space belongs to the word
  that follows it, so ``"cat"`` and ``" cat"`` are different tokens, as in GPT-2;
* a single digit: numbers are spelled digit by digit, which keeps the token for every number
  consistent and helps small models learn arithmetic (Llama does the same);
* a single CJK character: Chinese has no spaces, so a "word" run would be a whole clause;
  one character per chunk keeps chunks short and repeated, and a common character still
  becomes one token after merging its three UTF-8 bytes;
* a run of punctuation or symbols with an optional leading space (emoji are symbols, so
  ``"😀👍"`` is one chunk and a merge may join bytes of neighbouring emoji);
* a run of whitespace, leaving its last space to the word after it.

Every character falls into exactly one of these classes, so the chunks always concatenate
back to the input. We use the standard library ``re`` (the ``regex`` module with ``\\p{L}``
is not a dependency); ``[^\\W\\d_]`` is ``re``'s way to say "a Unicode letter".

A corpus repeats the same few thousand chunks over and over, so the encoder remembers the
ids of every chunk it has seen (an LRU cache) and runs the merge loop only for new ones.

Specials never come from plain text: ``encode("<|im_end|>")`` gives ordinary byte-level
tokens, so a user cannot forge the end of a chat turn. Special ids come only when the caller
names the special in ``allowed_special``.
"""

from __future__ import annotations

import heapq
import json
import re
from collections import Counter
from collections.abc import Iterable
from functools import lru_cache
from itertools import chain, pairwise, repeat
from pathlib import Path
from typing import Any, Literal

from .files import read_json, write_atomic

FORMAT = "tinyllm-bpe-v1"

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
PAD = "<|pad|>"
SPECIAL_TOKENS: tuple[str, ...] = (ENDOFTEXT, IM_START, IM_END, PAD)

NUM_BYTES = 256
SPECIAL_IDS: dict[str, int] = {name: NUM_BYTES + k for k, name in enumerate(SPECIAL_TOKENS)}
FIRST_MERGE_ID = NUM_BYTES + len(SPECIAL_TOKENS)

_CJK = r"\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
PRETOKENIZE_PATTERN = (
    rf" ?[^\W\d_{_CJK}]+"  # letters, with the space before them
    r"|\d"  # one digit
    rf"|[{_CJK}]"  # one CJK character
    r"| ?(?:[^\s\w]|_)+"  # punctuation and symbols, with the space before them
    r"|\s+(?!\S)|\s+"  # whitespace, leaving the last space for the next word
)

# Distinct chunks remembered by the encoder; a corpus has far fewer, a flood of random
# strings cannot grow memory without bound.
_CHUNK_CACHE_SIZE = 1 << 18
_NOT_A_MERGE = 1 << 62  # ranks above every real merge id: "this pair was never merged"


class Tokenizer:
    """A trained byte-level BPE vocabulary: ``merges[k]`` is the pair that became id 260 + k."""

    def __init__(
        self, merges: Iterable[tuple[int, int]], pattern: str = PRETOKENIZE_PATTERN
    ) -> None:
        self.merges: list[tuple[int, int]] = [(int(a), int(b)) for a, b in merges]
        self.pattern = pattern
        self._chunk_re = re.compile(pattern)
        self._ranks: dict[tuple[int, int], int] = {}
        self._token_bytes: list[bytes] = [bytes([b]) for b in range(NUM_BYTES)]
        self._token_bytes += [name.encode("utf-8") for name in SPECIAL_TOKENS]
        for new_id, (a, b) in enumerate(self.merges, start=FIRST_MERGE_ID):
            if not (0 <= a < new_id and 0 <= b < new_id):
                raise ValueError(f"merge {new_id}: ({a}, {b}) must name ids below {new_id}")
            if NUM_BYTES <= a < FIRST_MERGE_ID or NUM_BYTES <= b < FIRST_MERGE_ID:
                raise ValueError(f"merge {new_id}: ({a}, {b}) uses a special token id")
            if (a, b) in self._ranks:
                raise ValueError(f"merge {new_id}: ({a}, {b}) repeats merge {self._ranks[a, b]}")
            self._ranks[a, b] = new_id
            self._token_bytes.append(self._token_bytes[a] + self._token_bytes[b])
        self._encode_chunk = lru_cache(maxsize=_CHUNK_CACHE_SIZE)(self._merge_chunk)

    def __reduce__(self) -> tuple[type[Tokenizer], tuple[list[tuple[int, int]], str]]:
        """Pickle (e.g. to DataLoader worker processes) as merges + pattern, without the cache."""
        return (Tokenizer, (self.merges, self.pattern))

    # ----------------------------------------------------------------- vocabulary

    @property
    def vocab_size(self) -> int:
        """Number of ids, specials included: the embedding table needs this many rows."""
        return len(self._token_bytes)

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(SPECIAL_IDS)

    @property
    def eos_id(self) -> int:
        return SPECIAL_IDS[ENDOFTEXT]

    @property
    def im_start_id(self) -> int:
        return SPECIAL_IDS[IM_START]

    @property
    def im_end_id(self) -> int:
        return SPECIAL_IDS[IM_END]

    @property
    def pad_id(self) -> int:
        return SPECIAL_IDS[PAD]

    @property
    def stop_ids(self) -> tuple[int, ...]:
        """The ids that end a reply: ``<|im_end|>`` closes a turn, ``<|endoftext|>`` a text."""
        return (self.im_end_id, self.eos_id)

    def id_to_token_bytes(self, token_id: int) -> bytes:
        """The bytes token ``token_id`` stands for (a special's bytes are its literal text)."""
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(
                f"token id {token_id} is outside the vocabulary [0, {self.vocab_size})"
            )
        return self._token_bytes[token_id]

    # ------------------------------------------------------------------- training

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> Tokenizer:
        """Learn ``vocab_size - 260`` merges from ``texts`` (fewer if the corpus runs out).

        Training stops early when no pair occurs twice: a merge seen once only memorises.
        Ties between equally frequent pairs go to the pair with the smaller ids, so the same
        texts always give the same merges.
        """
        if vocab_size < FIRST_MERGE_ID:
            raise ValueError(
                f"vocab_size={vocab_size} is too small: the bytes and specials alone take "
                f"{FIRST_MERGE_ID} ids"
            )
        chunk_re = re.compile(PRETOKENIZE_PATTERN)
        chunk_counts: Counter[str] = Counter()
        for text in texts:
            _check_utf8(text)
            chunk_counts.update(chunk_re.findall(text))
        words = [list(chunk.encode("utf-8")) for chunk in chunk_counts]
        merges = _learn_merges(words, list(chunk_counts.values()), vocab_size - FIRST_MERGE_ID)
        return cls(merges)

    # ------------------------------------------------------------ encode / decode

    def encode(self, text: str, allowed_special: Iterable[str] | Literal["all"] = ()) -> list[int]:
        """Token ids for ``text``; the literal text of a special gives its id only if allowed.

        Strings holding lone surrogates (not valid Unicode, not storable as UTF-8) are
        rejected rather than silently altered, so ``decode(encode(s)) == s`` always holds.
        """
        _check_utf8(text)
        allowed = self._allowed_specials(allowed_special)
        if not allowed:
            return self._encode_plain(text)
        splitter = "(" + "|".join(re.escape(name) for name in sorted(allowed)) + ")"
        ids: list[int] = []
        # With a capturing group, re.split alternates: plain text, special, plain text, ...
        for k, piece in enumerate(re.split(splitter, text)):
            if k % 2:
                ids.append(SPECIAL_IDS[piece])
            else:
                ids += self._encode_plain(piece)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """The text for ``ids``; specials come out as their literal text.

        A sequence cut in the middle of a multi-byte character (for example a stream of
        generated tokens) does not raise: each broken byte sequence becomes U+FFFD.
        """
        pieces = []
        for token_id in ids:
            if not 0 <= token_id < self.vocab_size:
                raise ValueError(
                    f"cannot decode: token id {token_id} is outside the vocabulary "
                    f"[0, {self.vocab_size})"
                )
            pieces.append(self._token_bytes[token_id])
        return b"".join(pieces).decode("utf-8", errors="replace")

    def _encode_plain(self, text: str) -> list[int]:
        return list(chain.from_iterable(map(self._encode_chunk, self._chunk_re.findall(text))))

    def _merge_chunk(self, chunk: str) -> tuple[int, ...]:
        """Apply merges to one chunk, always the earliest-learned pair present first.

        A merge's id is its rank. A pair involving a merged token always has a larger id
        than the merge that made it, so "smallest id first" replays training's order.
        """
        ids = list(chunk.encode("utf-8"))
        while len(ids) > 1:
            new_id = min(map(self._ranks.get, pairwise(ids), repeat(_NOT_A_MERGE)))
            if new_id == _NOT_A_MERGE:
                break
            ids = _replace_pair(ids, self.merges[new_id - FIRST_MERGE_ID], new_id)
        return tuple(ids)

    def _allowed_specials(self, allowed_special: Iterable[str] | Literal["all"]) -> set[str]:
        if allowed_special == "all":
            return set(SPECIAL_TOKENS)
        if isinstance(allowed_special, str):
            raise ValueError(
                f"allowed_special={allowed_special!r}: pass 'all' or a collection of names, "
                f"e.g. ({allowed_special!r},)"
            )
        allowed = set(allowed_special)
        unknown = allowed - set(SPECIAL_TOKENS)
        if unknown:
            raise ValueError(
                f"allowed_special: unknown special token(s) {sorted(unknown)}; "
                f"known: {list(SPECIAL_TOKENS)}"
            )
        return allowed

    # ----------------------------------------------------------------- save / load

    def to_json(self) -> str:
        """The tokenizer as JSON text, one merge per line with the token it makes."""
        merges = ",\n".join(
            "    " + json.dumps(r, ensure_ascii=False) for r in self._merge_records()
        )
        fields = [
            f'"format": {json.dumps(FORMAT)}',
            f'"pattern": {json.dumps(self.pattern)}',
            f'"special_tokens": {json.dumps(SPECIAL_IDS)}',
            f'"merges": [\n{merges}\n  ]',
        ]
        return "{\n  " + ",\n  ".join(fields) + "\n}\n"

    def save(self, path: str | Path) -> None:
        """Write ``to_json()`` to ``path`` atomically."""
        write_atomic(path, self.to_json().encode("utf-8"))

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Read a file written by ``save``; a malformed file raises ``ValueError`` naming it."""
        path = Path(path)
        return _from_json(read_json(path), path)

    def _merge_records(self) -> list[dict[str, Any]]:
        return [
            {"id": new_id, "pair": [a, b], "token": _printable(self._token_bytes[new_id])}
            for new_id, (a, b) in enumerate(self.merges, start=FIRST_MERGE_ID)
        ]

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)})"


# ---------------------------------------------------------------------- helpers


def _check_utf8(text: str) -> None:
    """Reject lone surrogates: Python allows them in a str, but they are not Unicode text."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(
            f"cannot tokenize text: character {text[err.start]!r} at index {err.start} is a "
            "lone surrogate, which is not valid Unicode and has no UTF-8 bytes"
        ) from None


def _replace_pair(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """``ids`` with every non-overlapping occurrence of ``pair``, left to right, fused."""
    out = []
    i = 0
    last = len(ids) - 1
    while i <= last:
        if i < last and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _learn_merges(
    words: list[list[int]], counts: list[int], num_merges: int
) -> list[tuple[int, int]]:
    """The BPE training loop over distinct chunks ``words`` occurring ``counts`` times.

    Recounting every pair after each merge would cost a pass over the whole corpus per
    merge. Instead we keep the pair counts, an index from each pair to the words that
    contain it, and a max-heap of counts; a merge then touches only the words that contain
    the merged pair. Heap entries go stale when a count changes; a popped entry is used
    only if it still matches the current count.
    """
    pair_counts: Counter[tuple[int, int]] = Counter()
    words_with: dict[tuple[int, int], set[int]] = {}
    for w, (word, count) in enumerate(zip(words, counts, strict=True)):
        for pair in pairwise(word):
            pair_counts[pair] += count
            words_with.setdefault(pair, set()).add(w)
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)

    merges: list[tuple[int, int]] = []
    while len(merges) < num_merges and heap:
        neg_count, pair = heapq.heappop(heap)
        if pair_counts.get(pair) != -neg_count:
            continue  # stale entry
        if -neg_count < 2:
            break
        new_id = FIRST_MERGE_ID + len(merges)
        merges.append(pair)
        delta: Counter[tuple[int, int]] = Counter()
        for w in words_with.pop(pair):
            old = words[w]
            new = _replace_pair(old, pair, new_id)
            if len(new) == len(old):
                continue  # the index is never pruned, so it may name words no longer matching
            for p in pairwise(old):
                delta[p] -= counts[w]
            for p in pairwise(new):
                delta[p] += counts[w]
                if new_id in p:
                    words_with.setdefault(p, set()).add(w)
            words[w] = new
        for p, change in delta.items():
            if change:
                pair_counts[p] += change
                if pair_counts[p]:
                    heapq.heappush(heap, (-pair_counts[p], p))
                else:
                    del pair_counts[p]
    return merges


def _printable(token: bytes) -> str:
    """A token's text for humans; bytes that are not whole UTF-8 characters show as \\xNN."""
    return token.decode("utf-8", errors="backslashreplace")


def _from_json(data: Any, path: Path) -> Tokenizer:
    """Check every field of a loaded file and build the tokenizer, naming what is wrong."""
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    if data.get("format") != FORMAT:
        raise ValueError(f"{path}: field 'format' is {data.get('format')!r}, expected {FORMAT!r}")
    for field in ("pattern", "special_tokens", "merges"):
        if field not in data:
            raise ValueError(f"{path}: missing field {field!r}")
    pattern = data["pattern"]
    if not isinstance(pattern, str):
        raise ValueError(f"{path}: field 'pattern' must be a string")
    try:
        re.compile(pattern)
    except re.error as err:
        raise ValueError(
            f"{path}: field 'pattern' is not a valid regular expression: {err}"
        ) from None
    if data["special_tokens"] != SPECIAL_IDS:
        raise ValueError(
            f"{path}: field 'special_tokens' is {data['special_tokens']!r}, "
            f"expected {SPECIAL_IDS!r}"
        )
    records = data["merges"]
    if not isinstance(records, list):
        raise ValueError(f"{path}: field 'merges' must be a list")
    merges = []
    for k, record in enumerate(records):
        where = f"{path}: merges[{k}]"
        if not isinstance(record, dict) or set(record) != {"id", "pair", "token"}:
            raise ValueError(f"{where}: expected an object with keys 'id', 'pair', 'token'")
        pair = record["pair"]
        if not (isinstance(pair, list) and len(pair) == 2 and all(type(x) is int for x in pair)):
            raise ValueError(f"{where}: 'pair' must be two integer ids, got {pair!r}")
        if record["id"] != FIRST_MERGE_ID + k:
            raise ValueError(f"{where}: 'id' is {record['id']!r}, expected {FIRST_MERGE_ID + k}")
        merges.append((pair[0], pair[1]))
    try:
        tokenizer = Tokenizer(merges, pattern)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    for k, record in enumerate(tokenizer._merge_records()):
        if records[k]["token"] != record["token"]:
            raise ValueError(
                f"{path}: merges[{k}]: 'token' is {records[k]['token']!r}, but the pair "
                f"makes {record['token']!r}"
            )
    return tokenizer
