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

Other tools' tokenizers: a Hugging Face ``tokenizer.json`` or the tokenizer in a GGUF file
(SmolLM2's) is byte-level BPE too, with its own ids, merge order, pre-tokenizer regexes and
specials. ``formats.hf_tokenizer`` reads either into a ``BPEVocabulary`` and the same encoder
runs it (``Tokenizer.from_hf``, ``Tokenizer.from_gguf``). Every tokenizer, ours included, is
saved as Hugging Face's ``tokenizer.json`` (``save``, ``save_hf``), which
``transformers.AutoTokenizer`` reads; ``load`` still reads the project's older
``tinyllm-bpe-v1`` files.

Specials never come from plain text: ``encode("<|im_end|>")`` gives ordinary byte-level
tokens, so a user cannot forge the end of a chat turn. Special ids come only when the caller
names the special in ``allowed_special``.
"""

from __future__ import annotations

import heapq
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from functools import lru_cache
from itertools import chain, pairwise, repeat
from pathlib import Path
from typing import Any, Literal

from .files import read_json, write_atomic

LEGACY_FORMAT = "tinyllm-bpe-v1"  # what save wrote before it wrote Hugging Face's tokenizer.json

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
PAD = "<|pad|>"
SPECIAL_TOKENS: tuple[str, ...] = (ENDOFTEXT, IM_START, IM_END, PAD)

NUM_BYTES = 256
SPECIAL_IDS: dict[str, int] = {name: NUM_BYTES + k for k, name in enumerate(SPECIAL_TOKENS)}
FIRST_MERGE_ID = NUM_BYTES + len(SPECIAL_TOKENS)

_CJK = r"\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
# The pattern's character classes by name, apart from the pattern's shape, so that
# ``formats.hf_tokenizer`` can spell each class out as the characters it holds for another regex
# engine, whose ``\w``, ``\d`` and ``\s`` are not Python's.
PRETOKENIZE_CLASSES: dict[str, str] = {
    "letter": rf"[^\W\d_{_CJK}]",
    "digit": r"\d",
    "cjk": rf"[{_CJK}]",
    "symbol": r"(?:[^\s\w]|_)",
    "space": r"\s",
    "nonspace": r"\S",
}
PRETOKENIZE_TEMPLATE = (
    " ?{letter}+"  # letters, with the space before them
    "|{digit}"  # one digit
    "|{cjk}"  # one CJK character
    "| ?{symbol}+"  # punctuation and symbols, with the space before them
    "|{space}+(?!{nonspace})|{space}+"  # whitespace, leaving the last space for the next word
)
PRETOKENIZE_PATTERN = PRETOKENIZE_TEMPLATE.format(**PRETOKENIZE_CLASSES)

# Distinct chunks remembered by the encoder; a corpus has far fewer, a flood of random
# strings cannot grow memory without bound.
_CHUNK_CACHE_SIZE = 1 << 18
_NOT_A_MERGE = 1 << 62  # above every real merge rank: "this pair was never merged"
_BYTE_VALUES = tuple(range(NUM_BYTES))  # our byte ids: each byte is its own id


@dataclass(frozen=True)
class BPEVocabulary:
    """A byte-level BPE tokenizer as plain data: all ``Tokenizer`` needs, however it was made.

    The project's own tokenizer and a Hugging Face or GGUF one differ only in these values,
    so one encoder runs them all:

    * ``token_bytes[i]``: the bytes id ``i`` stands for (a special's bytes are its literal text);
    * ``byte_ids[b]``: the id a lone byte ``b`` starts as, before any merge. Ours are the byte
      values themselves; a GPT-2-style vocabulary puts its one-byte tokens anywhere, and may
      lack some (``None``): SmolLM2 has none for six control characters and for the bytes
      that only characters never assigned in Unicode use. Such a byte is dropped before
      merging, as Hugging Face's BPE drops a character it has no token for, so text holding
      one does not round-trip;
    * ``merges``: ``(left, right, merged)`` ids, best first: when a chunk holds several
      mergeable pairs, the pair listed first is fused first;
    * ``split_patterns``: the pre-tokenizer, regexes applied one after another, each cutting
      every piece of the one before into smaller chunks; merges never cross a cut.
      ``pattern_syntax`` names the module that reads them: ``"re"``, the standard library, for
      the project's own pattern, or ``"regex"``, which knows the ``\\p{L}`` / ``\\p{N}`` classes
      other tools write. A ``"regex"`` stage keeps the text between its matches as pieces too
      (Hugging Face's ``Split`` with ``behavior="Isolated"``);
    * ``special_tokens``: text that becomes its one id only where ``encode``'s
      ``allowed_special`` names it; ``added_tokens``: text that always does (Hugging Face's
      non-special added tokens: not control tokens, so nothing to guard);
    * for chat and for writing the tokenizer back: the chat template (Jinja) and the token
      names the file declares for beginning, end, unknown and padding.
    """

    token_bytes: tuple[bytes, ...]
    byte_ids: tuple[int | None, ...]
    merges: tuple[tuple[int, int, int], ...]
    split_patterns: tuple[str, ...]
    pattern_syntax: Literal["re", "regex"]
    special_tokens: Mapping[str, int]
    added_tokens: Mapping[str, int] = dataclass_field(default_factory=dict)
    chat_template: str | None = None
    bos_token: str | None = None
    eos_token: str | None = None
    unk_token: str | None = None
    pad_token: str | None = None


class Tokenizer:
    """A byte-level BPE tokenizer. Trained here, ``merges[k]`` is the pair that became id 260 + k;
    read from another tool (``from_hf``, ``from_gguf``), ``merges[k]`` is that file's k-th merge.
    """

    def __init__(
        self, merges: Iterable[tuple[int, int]], pattern: str = PRETOKENIZE_PATTERN
    ) -> None:
        """The project's own id layout (module docstring) with these merges and pattern."""
        pairs = [(int(a), int(b)) for a, b in merges]
        seen: dict[tuple[int, int], int] = {}
        token_bytes = [bytes([b]) for b in range(NUM_BYTES)]
        token_bytes += [name.encode("utf-8") for name in SPECIAL_TOKENS]
        for new_id, (a, b) in enumerate(pairs, start=FIRST_MERGE_ID):
            if not (0 <= a < new_id and 0 <= b < new_id):
                raise ValueError(f"merge {new_id}: ({a}, {b}) must name ids below {new_id}")
            if NUM_BYTES <= a < FIRST_MERGE_ID or NUM_BYTES <= b < FIRST_MERGE_ID:
                raise ValueError(f"merge {new_id}: ({a}, {b}) uses a special token id")
            if (a, b) in seen:
                raise ValueError(f"merge {new_id}: ({a}, {b}) repeats merge {seen[a, b]}")
            seen[a, b] = new_id
            token_bytes.append(token_bytes[a] + token_bytes[b])
        self._setup(BPEVocabulary(
            token_bytes=tuple(token_bytes),
            byte_ids=_BYTE_VALUES,
            merges=tuple((a, b, new_id) for (a, b), new_id in seen.items()),
            split_patterns=(pattern,),
            pattern_syntax="re",
            special_tokens=dict(SPECIAL_IDS),
            eos_token=ENDOFTEXT,
            pad_token=PAD,
        ))

    @classmethod
    def from_vocabulary(cls, vocabulary: BPEVocabulary) -> Tokenizer:
        """A tokenizer for any byte-level BPE vocabulary (``formats.hf_tokenizer`` makes them)."""
        tokenizer = cls.__new__(cls)
        tokenizer._setup(vocabulary)
        return tokenizer

    @classmethod
    def from_hf(cls, path: str | Path) -> Tokenizer:
        """Read a Hugging Face ``tokenizer.json`` (a file, or a folder holding one).

        A folder's ``tokenizer_config.json`` (or one beside the file) gives the chat template
        and the declared special tokens. Only byte-level BPE is read; anything else is refused
        with an error naming the file and the field (``formats.hf_tokenizer``).
        """
        from .formats.hf_tokenizer import read_hf_tokenizer  # it imports this module

        return cls.from_vocabulary(read_hf_tokenizer(path))

    @classmethod
    def from_gguf(
        cls, path: str | Path, pre_tokenizer: Literal["transformers", "llama.cpp"] = "llama.cpp"
    ) -> Tokenizer:
        """The tokenizer stored in a GGUF file's metadata (e.g. SmolLM2's).

        ``pre_tokenizer`` picks whose reading of the file's ``tokenizer.ggml.pre`` to follow:
        ``"llama.cpp"`` (the default) gives the ids llama.cpp and the model's own
        ``tokenizer.json`` give, the ids it was trained on; ``"transformers"`` those
        ``AutoTokenizer.from_pretrained(..., gguf_file=...)`` gives. They differ for SmolLM2
        on whitespace before digits: see ``formats.hf_tokenizer``.
        """
        from .formats.hf_tokenizer import read_gguf_tokenizer  # it imports this module

        return cls.from_vocabulary(read_gguf_tokenizer(path, pre_tokenizer))

    def _setup(self, vocabulary: BPEVocabulary) -> None:
        """Build the encoder's tables from ``vocabulary``: ids, merge ranks, splitter, specials."""
        size = len(vocabulary.token_bytes)
        named = [*vocabulary.special_tokens.values(), *vocabulary.added_tokens.values()]
        used = [*named, *(i for merge in vocabulary.merges for i in merge)]
        used += [i for i in vocabulary.byte_ids if i is not None]
        if len(vocabulary.byte_ids) != NUM_BYTES or not all(0 <= i < size for i in used):
            raise ValueError(
                f"inconsistent vocabulary: {NUM_BYTES} byte ids are needed and every id must be "
                f"in [0, {size})"
            )
        self.vocabulary = vocabulary
        self.merges: list[tuple[int, int]] = [(a, b) for a, b, _ in vocabulary.merges]
        self.pattern: str | None = (
            vocabulary.split_patterns[0] if len(vocabulary.split_patterns) == 1 else None
        )
        self._token_bytes: list[bytes] = list(vocabulary.token_bytes)
        self._byte_ids = None if vocabulary.byte_ids == _BYTE_VALUES else list(vocabulary.byte_ids)
        self._byte_holes = None in vocabulary.byte_ids
        self._ranks = {(a, b): rank for rank, (a, b) in enumerate(self.merges)}
        self._merged_ids = [merged for _, _, merged in vocabulary.merges]
        self._split = _splitter(vocabulary.split_patterns, vocabulary.pattern_syntax)
        self._specials = dict(vocabulary.special_tokens)
        self._added = dict(vocabulary.added_tokens)
        self._encode_chunk = lru_cache(maxsize=_CHUNK_CACHE_SIZE)(self._merge_chunk)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickle (e.g. to DataLoader worker processes) as the vocabulary, without the cache."""
        return (Tokenizer.from_vocabulary, (self.vocabulary,))

    # ----------------------------------------------------------------- vocabulary

    @property
    def vocab_size(self) -> int:
        """Number of ids, specials included: the embedding table needs this many rows."""
        return len(self._token_bytes)

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def special_tokens(self) -> dict[str, int]:
        """Every special token and its id: text that gives that id only when allowed."""
        return dict(self._specials)

    @property
    def eos_id(self) -> int:
        """``<|endoftext|>``, the end of a text: what pretraining puts between documents.

        The file's declared ``eos_token`` counts only where the vocabulary has no
        ``<|endoftext|>``: an instruct model's file (SmolLM2's) declares ``<|im_end|>``
        there, the end of a *turn*, which ``stop_ids`` holds anyway.
        """
        if ENDOFTEXT in self._specials:
            return self._specials[ENDOFTEXT]
        return self._declared_id("eos_token")

    @property
    def bos_id(self) -> int | None:
        """The declared ``bos_token``'s id (SmolLM2: ``<|im_start|>``), or ``None`` (ours).

        ``encode`` never adds it (the readers refuse ``add_bos_token``); it is kept so that
        a saved model tells other tools the same (``generation_config.json``)."""
        return None if self.vocabulary.bos_token is None else self._declared_id("bos_token")

    @property
    def im_start_id(self) -> int:
        return self._chatml_id(IM_START)

    @property
    def im_end_id(self) -> int:
        return self._chatml_id(IM_END)

    @property
    def pad_id(self) -> int:
        """The id a batch is padded with: the declared ``pad_token``, else ``<|pad|>``, else EOS.

        Any id would do (padding is masked out of attention and loss); the declared one
        keeps batches the same as other tools'.
        """
        if self.vocabulary.pad_token is not None:
            return self._declared_id("pad_token")
        return self._specials.get(PAD, self.eos_id)

    @property
    def stop_ids(self) -> tuple[int, ...]:
        """The ids that end a reply: ``<|im_end|>`` closes a turn, ``<|endoftext|>`` a text, and
        the file's declared ``eos_token`` (SmolLM2's is ``<|im_end|>``) whatever it is."""
        ids = [self.im_end_id] if IM_END in self._specials else []
        ids.append(self.eos_id)
        if self.vocabulary.eos_token is not None:
            ids.append(self._declared_id("eos_token"))
        return tuple(dict.fromkeys(ids))

    def _chatml_id(self, name: str) -> int:
        if name not in self._specials:
            raise ValueError(f"this tokenizer has no special token {name}: it cannot frame ChatML")
        return self._specials[name]

    def _declared_id(self, field_name: str) -> int:
        """The id of the token the file declares as ``field_name`` (e.g. ``eos_token``)."""
        name = getattr(self.vocabulary, field_name)
        if name is None:
            raise ValueError(f"this tokenizer declares no {field_name}")
        for table in (self._specials, self._added):
            if name in table:
                return table[name]
        raise ValueError(f"the declared {field_name} {name!r} is not one of the tokenizer's tokens")

    def id_to_token_bytes(self, token_id: int) -> bytes:
        """The bytes token ``token_id`` stands for (a special's bytes are its literal text)."""
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(
                f"token id {token_id} is outside the vocabulary [0, {self.vocab_size})"
            )
        return self._token_bytes[token_id]

    # ------------------------------------------------------------------------ chat

    @property
    def chat_template(self) -> str | None:
        """The file's Jinja chat template; ``None`` for ours (``chat.format_chatml`` renders it)."""
        return self.vocabulary.chat_template

    def apply_chat_template(
        self, messages: Sequence[Any], add_generation_prompt: bool = False
    ) -> str:
        """The text of a conversation, as transformers' ``apply_chat_template(tokenize=False)``.

        With a template, it is rendered the way transformers renders it
        (``formats.hf_tokenizer.render_chat_template``); without, ``chat.format_chatml``.
        To train or prompt a model use ``chat.encode_chat``: its ids keep typed specials
        as text.
        """
        if self.vocabulary.chat_template is None:
            from .chat import format_chatml  # chat.py imports this module

            return format_chatml(messages, add_generation_prompt)
        from .formats.hf_tokenizer import render_chat_template  # it imports this module

        return render_chat_template(self.vocabulary, messages, add_generation_prompt)

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
        if not allowed and not self._added:
            return self._encode_plain(text)
        whole = {**self._added, **{name: self._specials[name] for name in allowed}}
        # Longest first: where two tokens start at the same place the longer one wins, as in
        # Hugging Face's matcher (leftmost-longest).
        names = sorted(whole, key=lambda name: (-len(name), name))
        splitter = "(" + "|".join(map(re.escape, names)) + ")"
        ids: list[int] = []
        # With a capturing group, re.split alternates: plain text, special, plain text, ...
        for k, piece in enumerate(re.split(splitter, text)):
            if k % 2:
                ids.append(whole[piece])
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
        return list(chain.from_iterable(map(self._encode_chunk, self._split(text))))

    def _merge_chunk(self, chunk: str) -> tuple[int, ...]:
        """Apply merges to one chunk, always the best-ranked pair present first.

        A merge's rank is its place in the list (for ours, the order training learned them).
        A pair involving a merged token always ranks below the merge that made it, so "best
        rank first, every occurrence left to right" replays training's order. Hugging Face's
        loop fuses one occurrence at a time from a priority queue; on such a list the two
        give the same ids (``formats.hf_tokenizer`` refuses a list where that fails).
        """
        data = chunk.encode("utf-8")
        if self._byte_ids is None:
            ids = list(data)
        else:
            ids = [self._byte_ids[b] for b in data]
            if self._byte_holes:
                ids = [i for i in ids if i is not None]
        while len(ids) > 1:
            rank = min(map(self._ranks.get, pairwise(ids), repeat(_NOT_A_MERGE)))
            if rank == _NOT_A_MERGE:
                break
            ids = _replace_pair(ids, self.merges[rank], self._merged_ids[rank])
        return tuple(ids)

    def _allowed_specials(self, allowed_special: Iterable[str] | Literal["all"]) -> set[str]:
        if allowed_special == "all":
            return set(self._specials)
        if isinstance(allowed_special, str):
            raise ValueError(
                f"allowed_special={allowed_special!r}: pass 'all' or a collection of names, "
                f"e.g. ({allowed_special!r},)"
            )
        allowed = set(allowed_special)
        unknown = allowed - set(self._specials)
        if unknown:
            raise ValueError(
                f"allowed_special: unknown special token(s) {sorted(unknown)}; "
                f"known: {list(self._specials)}"
            )
        return allowed

    # ----------------------------------------------------------------- save / load

    def to_json(self) -> str:
        """The tokenizer as Hugging Face's ``tokenizer.json`` text, for ours and any other.

        The file alone holds the ids, merges, pre-tokenizer and special tokens; the chat
        template and the declared special tokens of another tool's tokenizer live in
        ``tokenizer_config.json``, which ``save_hf`` writes beside it.
        """
        from .formats.hf_tokenizer import TOKENIZER_FILE, hf_tokenizer_files  # imports this module

        return hf_tokenizer_files(self.vocabulary)[TOKENIZER_FILE].decode("utf-8")

    def save(self, path: str | Path) -> None:
        """Write ``to_json()`` to ``path`` atomically."""
        write_atomic(path, self.to_json().encode("utf-8"))

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Read a ``tokenizer.json``: Hugging Face's, as ``save`` writes it (with the
        ``tokenizer_config.json`` beside it, if any: ``from_hf``), or the project's older
        ``tinyllm-bpe-v1`` file. A malformed file raises ``ValueError`` naming it."""
        from .formats.hf_tokenizer import read_hf_tokenizer  # it imports this module

        path = Path(path)
        data = read_json(path)
        if isinstance(data, dict) and "format" in data:
            return _from_legacy_json(data, path)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
        return cls.from_vocabulary(read_hf_tokenizer(path, data))

    def save_hf(self, directory: str | Path) -> None:
        """Write Hugging Face's tokenizer files into ``directory`` (``hf_tokenizer_files``).

        ``AutoTokenizer.from_pretrained(directory)`` then gives the same ids as ``encode``
        (for text without special-token strings, which Hugging Face always matches), and
        ``Tokenizer.from_hf(directory)`` reads it back.
        """
        from .formats.hf_tokenizer import save_hf_tokenizer  # it imports this module

        save_hf_tokenizer(self.vocabulary, directory)

    def _merge_records(self) -> list[dict[str, Any]]:
        return [
            {"id": new_id, "pair": [a, b], "token": _printable(self._token_bytes[new_id])}
            for new_id, (a, b) in enumerate(self.merges, start=FIRST_MERGE_ID)
        ]

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)})"


# ---------------------------------------------------------------------- helpers


def _splitter(patterns: Sequence[str], syntax: str) -> Callable[[str], list[str]]:
    """The pre-tokenizer as one function from text to chunks (see ``BPEVocabulary``)."""
    if syntax == "re":
        # The project's pattern matches every character, so findall loses nothing.
        compiled: list[Any] = [re.compile(pattern) for pattern in patterns]
    elif syntax == "regex":
        import regex  # only other tools' patterns need it (\p{L}, \p{N})

        # Also match a run of text where the pattern matches nowhere, as Split keeps it.
        compiled = [regex.compile(rf"(?:{p})|(?s:(?:(?!(?:{p})).)+)") for p in patterns]
    else:
        raise ValueError(f"unknown pattern syntax {syntax!r}: expected 're' or 'regex'")
    stages = [_findall(pattern) for pattern in compiled]
    if len(stages) == 1:
        return stages[0]

    def split(text: str) -> list[str]:
        pieces = [text]
        for stage in stages:
            pieces = [chunk for piece in pieces for chunk in stage(piece)]
        return pieces

    return split


def _findall(pattern: Any) -> Callable[[str], list[str]]:
    """Whole matches of ``pattern`` (``findall`` would return groups if it had any)."""
    if pattern.groups:
        return lambda text: [match.group() for match in pattern.finditer(text)]
    return pattern.findall


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


def _from_legacy_json(data: Any, path: Path) -> Tokenizer:
    """A ``tinyllm-bpe-v1`` file (what ``save`` wrote before it wrote Hugging Face's format),
    every field checked, naming what is wrong."""
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    if data.get("format") != LEGACY_FORMAT:
        raise ValueError(
            f"{path}: field 'format' is {data.get('format')!r}, expected {LEGACY_FORMAT!r}"
        )
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
