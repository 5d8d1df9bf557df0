"""Hugging Face's ``tokenizer.json`` and a GGUF file's tokenizer metadata, read and written.

Both describe a byte-level BPE tokenizer like ours, spelled differently, so each becomes a
``tokenizer.BPEVocabulary`` and ``Tokenizer`` runs it with its one encoder:

``tokenizer.json`` (the ``tokenizers`` library's file)
    ``model``: ``{"type": "BPE", "vocab": {token: id}, "merges": [...]}`` with each merge as
    ``"a b"`` (older files) or ``["a", "b"]``, best first; ``pre_tokenizer``: how text is cut
    before BPE; ``added_tokens``: whole tokens matched in the text before anything else
    (``special: true`` marks control tokens such as ``<|im_end|>``); ``decoder``. Beside it,
    ``tokenizer_config.json`` (and, from transformers 5, ``chat_template.jinja``) holds the
    chat template and which tokens are BOS, EOS, UNK and padding.
GGUF metadata (llama.cpp's single file)
    ``tokenizer.ggml.tokens`` (id -> token), ``token_type`` (3 marks a control token, 4 one
    the user defined), ``merges`` (``"a b"``), ``pre`` (a *name* for the pre-tokenizer),
    ``bos/eos/unknown/padding_token_id`` and ``tokenizer.chat_template``.

**The byte alphabet.** A BPE vocabulary in JSON must be text, but byte-level tokens are
byte strings, often not valid UTF-8 alone. GPT-2 therefore spells each byte as one printable
character: the 188 bytes that are printable Latin-1 stand for themselves, and the other 68
(controls, space, ...) take the characters from U+0100 on, in byte order. So ``" the"`` is
stored as ``"Ġthe"`` (space = U+0120). ``BYTE_CHARS`` is that table.

**The pre-tokenizer of SmolLM2's GGUF.** The file says ``tokenizer.ggml.pre = "smollm"``.
For llama.cpp that name means two regexes in turn: first every ``\\p{N}`` character is cut
out alone, then GPT-2's regex (``GPT2_SPLIT``) runs on each piece; SmolLM2's own
``tokenizer.json`` says the same thing as ``Digits(individual_digits=True)`` before
``ByteLevel``. transformers (5.24), asked for ``AutoTokenizer.from_pretrained(folder,
gguf_file=...)``, does not know the name: its table of GGUF pre-tokenizers
(``GGUF_PRE_TOKENIZER_SPLITS``) has no ``"smollm"``, so it builds GPT-2's plain ``ByteLevel``
with its regex and no digit step. The merges contain no pair joining two digits or a space and
a digit (SmolLM2 learned none), so numbers come out the same; whitespace before a digit does
not: in ``"a  1"`` GPT-2's regex leaves the second space to the digit, ``" 1"``, which BPE
cannot join, so transformers gives ``[" ", " ", "1"]`` where llama.cpp gives ``["  ", "1"]``
(the same for ``"\\n\\n"`` before a number). ``read_gguf_tokenizer`` follows llama.cpp by
default: those are the ids SmolLM2 was trained on, the ids its own ``tokenizer.json`` gives,
and what ``load_pretrained`` fine-tunes with. ``pre_tokenizer="transformers"`` gives
transformers' GGUF ids instead (the tests compare both with their references).

**What is refused.** A reader that silently misreads a tokenizer gives other ids and no
error, so everything this one does not implement is refused with the file and the field:
other models (WordPiece, Unigram, WordLevel), normalizers, BPE dropout, byte fallback,
``ignore_merges``, word prefixes and suffixes, prefix spaces, post-processors that add tokens
(BOS), added tokens with ``lstrip``/``rstrip``/``single_word``, and merge lists on which our
encoder's "best pair first, every occurrence" differs from Hugging Face's one-at-a-time
queue (a merge that uses a token only a later merge makes, or two merges making one token).

**Regex engines.** ``tokenizers`` runs its patterns with Oniguruma; we read them with the
``regex`` package, which spells classes the same way (``\\p{L}``). Both follow the Unicode
tables of their release, so a character assigned only in a newer Unicode version may fall in
different classes (none of the characters this Python's ``unicodedata`` knows does, for
GPT-2's regex). The project's own pattern is written for the standard library ``re``, whose
``\\w``, ``\\d`` and ``\\s`` are not Oniguruma's (combining marks are ``\\w`` only there,
``"\\x1c"`` is ``\\s`` only here), so ``save_hf_tokenizer`` writes each of its classes out as
the very characters ``re`` puts in it (``portable_pattern``).

**Chat templates** are Jinja, rendered as transformers renders them
(``render_chat_template``): a sandbox, ``trim_blocks`` and ``lstrip_blocks``, the loop
controls extension, a ``tojson`` filter that keeps non-ASCII text, and the globals
``raise_exception`` and ``strftime_now``; the declared special tokens are template variables.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from ..chat import CHATML_TEMPLATE
from ..files import checked_field, json_bytes, read_json_object, write_atomic
from ..tokenizer import (
    PRETOKENIZE_CLASSES,
    PRETOKENIZE_PATTERN,
    PRETOKENIZE_TEMPLATE,
    BPEVocabulary,
)
from .gguf import gguf_metadata

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
TEMPLATE_FILE = "chat_template.jinja"
SPECIAL_TOKENS_FILE = "special_tokens_map.json"

# GPT-2's pre-tokenizer regex (tokenizers' ByteLevel with use_regex=True): English
# contractions, a letter run, a number run or a symbol run (each with one space before it),
# and whitespace that leaves its last space to the word after it.
GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
# tokenizers' Digits pre-tokenizer as a split pattern: each number character alone, or runs.
DIGITS_ALONE = r"\p{N}"
DIGIT_RUNS = r"\p{N}+"

# GGUF pre-tokenizer names read here, with the split stages each tool builds for them.
GGUF_PRE_TOKENIZERS: dict[str, dict[str, tuple[str, ...]]] = {
    "transformers": {"gpt2": (GPT2_SPLIT,), "smollm": (GPT2_SPLIT,)},
    "llama.cpp": {"gpt2": (GPT2_SPLIT,), "smollm": (DIGITS_ALONE, GPT2_SPLIT)},
}
GGUF_CONTROL, GGUF_USER_DEFINED = 3, 4  # llama.cpp's token types that become added tokens
GGUF_NORMAL, GGUF_UNUSED = 1, 5  # an ordinary token; a row of the embedding with no token
DECLARED_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token")
# Each declared token's id key in GGUF: tokenizer.ggml.{bos,eos,unknown,padding}_token_id.
GGUF_DECLARED = dict(zip(DECLARED_TOKENS, ("bos", "eos", "unknown", "padding"), strict=True))
OWN_PATTERN_KEY = "tokenizer.tinyllm.pretokenize_pattern"
"""Our own key: the project's pre-tokenizer regex (``PRETOKENIZE_PATTERN``), which llama.cpp
has no name for. ``write_gguf`` stores it beside ``tokenizer.ggml.pre = OWN_PATTERN_PRE``;
llama.cpp and transformers ignore keys they do not know (see ``gguf_tokenizer_metadata``)."""
OWN_PATTERN_PRE = "smollm"
_REQUIRED = object()


def _byte_chars() -> tuple[str, ...]:
    """GPT-2's character for each byte (module docstring)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[byte] = chr(byte)
        else:
            chars[byte] = chr(256 + extra)
            extra += 1
    return tuple(chars[byte] for byte in range(256))


BYTE_CHARS = _byte_chars()
CHAR_BYTES = {char: byte for byte, char in enumerate(BYTE_CHARS)}


def spell_bytes(data: bytes) -> str:
    """Bytes in the byte alphabet: ``b" the"`` -> ``"Ġthe"``."""
    return "".join(BYTE_CHARS[byte] for byte in data)


def _unspell(token: str) -> bytes | None:
    """The bytes a byte-alphabet token stands for; ``None`` if it uses another character."""
    try:
        return bytes(CHAR_BYTES[char] for char in token)
    except KeyError:
        return None


# ------------------------------------------------------------------ field access


class _Object:
    """A JSON object read from ``path``, at dotted field ``where``; errors name both."""

    def __init__(self, value: Any, path: Path | str, where: str = "") -> None:
        self.path, self.where = path, where
        if not isinstance(value, dict):
            what = f"field '{where}' must be" if where else "expected"
            raise ValueError(f"{path}: {what} a JSON object, got {_kind(value)}")
        self.value: dict[str, Any] = value

    def field(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def fail(self, key: str, message: str) -> ValueError:
        return ValueError(f"{self.path}: field '{self.field(key)}' {message}")

    def get(self, key: str, default: Any = _REQUIRED) -> Any:
        if key not in self.value:
            if default is _REQUIRED:
                raise ValueError(f"{self.path}: missing field '{self.field(key)}'")
            return default
        return self.value[key]

    def string(self, key: str, default: Any = _REQUIRED) -> Any:
        value = self.get(key, default)
        if value is not default and not isinstance(value, str):
            raise self.fail(key, f"must be a string, got {_kind(value)}")
        return value

    def flag(self, key: str, default: bool) -> bool:
        return self._checked(key, bool, default)

    def integer(self, key: str, default: Any = _REQUIRED, minimum: int | None = None) -> Any:
        return self._checked(key, int, default, minimum)

    def _checked(self, key: str, kind: type, default: Any, minimum: int | None = None) -> Any:
        """``files.checked_field`` (JSON's ``true`` is no int), naming the dotted field."""
        name = self.field(key)
        view = {name: self.value[key]} if key in self.value else {}
        return checked_field(view, name, kind, self.path, default=default, minimum=minimum)

    def must_be(self, key: str, default: Any, allowed: Sequence[Any], why: str) -> None:
        """Refuse an option this reader does not implement."""
        value = self.get(key, default)
        if not any(value == ok and type(value) is type(ok) for ok in allowed):
            raise self.fail(key, f"is {value!r}: {why}")

    def child(self, key: str, default: Any = _REQUIRED) -> Any:
        """The object at ``key``; ``None`` only where a default allows it (null or absent)."""
        value = self.get(key, default)
        if value is None and default is not _REQUIRED:
            return None
        return _Object(value, self.path, self.field(key))

    def items(self, key: str) -> list[Any]:
        value = self.get(key)
        if not isinstance(value, list):
            raise self.fail(key, f"must be a list, got {_kind(value)}")
        return value


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


# ------------------------------------------------------------------ tokenizer.json


def _own_template_back(template: str | None) -> str | None:
    """``None`` for ``chat.CHATML_TEMPLATE``, which the writers store for the project's own
    tokenizer (whose ChatML ``format_chatml`` renders); any other template as it is."""
    return None if template == CHATML_TEMPLATE else template


def read_hf_tokenizer(path: str | Path, data: dict[str, Any] | None = None) -> BPEVocabulary:
    """A ``tokenizer.json`` (or a folder holding one) and its folder's config, as a vocabulary.

    ``data`` is the file's contents when the caller has parsed it already (``Tokenizer.load``
    looks at it first to tell the old ``tinyllm-bpe-v1`` format from this one).
    """
    path = Path(path)
    file = path / TOKENIZER_FILE if path.is_dir() else path
    data = _Object(read_json_object(file) if data is None else data, file)
    config_file = file.parent / CONFIG_FILE
    config = _Object(read_json_object(config_file) if config_file.is_file() else {}, config_file)
    template_file = file.parent / TEMPLATE_FILE
    template = template_file.read_text(encoding="utf-8") if template_file.is_file() else None
    return vocabulary_from_json(data, config, template)


def vocabulary_from_json(
    data: _Object, config: _Object, template: str | None = None
) -> BPEVocabulary:
    """Check every field this reader depends on and build the vocabulary, or refuse."""
    model = data.child("model")
    kind = model.string("type")
    if kind != "BPE":
        raise model.fail("type", f"is {kind!r}: only byte-level BPE tokenizers are read here")
    model.must_be("dropout", None, (None, 0, 0.0), "BPE dropout samples ids at random")
    for key in ("continuing_subword_prefix", "end_of_word_suffix"):
        model.must_be(key, None, (None, ""), "byte-level BPE marks no word pieces")
    for key in ("byte_fallback", "ignore_merges"):
        if model.flag(key, False):
            raise model.fail(key, "is true: not implemented here")
    if data.get("truncation", None) is not None:
        raise data.fail("truncation", "is set: this reader does not truncate")
    normalizer = data.child("normalizer", None)
    if normalizer is not None:
        raise data.fail("normalizer", f"is {normalizer.get('type', '?')!r}: not implemented here")
    stages = _split_stages(data.child("pre_tokenizer"))
    _check_post_processor(data.child("post_processor", None))
    decoder = data.child("decoder", None)
    if decoder is None or decoder.get("type", None) != "ByteLevel":
        kind = None if decoder is None else decoder.get("type", None)
        raise data.fail("decoder", f"is {kind!r}: byte-level BPE needs the ByteLevel decoder")

    vocab = model.get("vocab")
    if not isinstance(vocab, dict):
        raise model.fail("vocab", f"must be an object of token -> id, got {_kind(vocab)}")
    for token, token_id in vocab.items():
        if type(token_id) is not int or token_id < 0:
            raise model.fail("vocab", f"gives token {token!r} the id {token_id!r}")
    specials, added = _added_tokens(data, vocab)
    by_id: dict[int, bytes] = {}
    named = {token_id: name for table in (specials, added) for name, token_id in table.items()}
    for token, token_id in vocab.items():
        if token_id in by_id:
            raise model.fail("vocab", f"gives id {token_id} to two tokens")
        spelled = _unspell(token)
        if spelled is None and token_id not in named:
            raise model.fail("vocab", f"token {token!r} is not written in the byte alphabet")
        by_id[token_id] = spelled if token_id not in named else named[token_id].encode("utf-8")
    for token_id, name in named.items():
        by_id.setdefault(token_id, name.encode("utf-8"))
    token_bytes = _contiguous(by_id, lambda message: model.fail("vocab", message))
    byte_ids = tuple(vocab.get(char) for char in BYTE_CHARS)
    merges = _ranked_merges(_merge_pairs(model), vocab, model.fail)
    fields = _config_fields(config, template, {**specials, **added})
    syntax: Literal["re", "regex"] = "regex"
    # The project's own tokenizer, as hf_tokenizer_files wrote it, reads back as itself:
    # the same vocabulary as the one saved, with the pattern that re runs (7x faster than
    # regex runs its classes spelled out) and ChatML rendered by format_chatml.
    # The first test is cheap and spares other tokenizers portable_pattern()'s 0.5 s.
    if stages[:1] and stages[0].startswith(" ?[") and stages == (portable_pattern(),):
        stages, syntax = (PRETOKENIZE_PATTERN,), "re"
    fields["chat_template"] = _own_template_back(fields["chat_template"])
    return BPEVocabulary(
        token_bytes=token_bytes,
        byte_ids=byte_ids,
        merges=merges,
        split_patterns=stages,
        pattern_syntax=syntax,
        special_tokens=specials,
        added_tokens=added,
        **fields,
    )


def _split_stages(pre: _Object) -> tuple[str, ...]:
    """The pre-tokenizer as split patterns: ``Split``/``Digits`` steps, then ``ByteLevel``."""
    if pre.get("type") == "Sequence":
        steps = [_Object(step, pre.path, f"{pre.field('pretokenizers')}[{k}]")
                 for k, step in enumerate(pre.items("pretokenizers"))]
    else:
        steps = [pre]
    if not steps:
        raise pre.fail("pretokenizers", "is empty: byte-level BPE needs ByteLevel last")
    *first, last = steps
    if last.get("type") != "ByteLevel":
        raise last.fail("type", f"is {last.get('type')!r}: the last step must be ByteLevel")
    if last.flag("add_prefix_space", True):
        raise last.fail("add_prefix_space", "is true: not implemented here")
    stages = []
    for step in first:
        kind = step.get("type")
        if kind == "Digits":
            stages.append(DIGITS_ALONE if step.flag("individual_digits", False) else DIGIT_RUNS)
        elif kind == "Split":
            stages.append(_split_pattern(step))
        else:
            raise step.fail("type", f"is {kind!r}: only Split and Digits steps are read here")
    if last.flag("use_regex", True):
        stages.append(GPT2_SPLIT)
    return tuple(stages)


def _split_pattern(step: _Object) -> str:
    """A ``Split`` step's pattern, for ``regex``; only ``Isolated`` (keep every piece) is read."""
    step.must_be("behavior", _REQUIRED, ("Isolated",), "only 'Isolated' is implemented here")
    step.must_be("invert", False, (False,), "not implemented here")
    pattern = step.child("pattern")
    if "Regex" in pattern.value:
        text = pattern.string("Regex")
    else:
        text = re.escape(pattern.string("String"))
    import regex  # the pre-tokenizer's module (tokenizer._splitter)

    try:
        regex.compile(text)
    except regex.error as err:
        raise pattern.fail("Regex", f"is not a valid regular expression: {err}") from None
    return text


def _check_post_processor(post: _Object | None) -> None:
    """Accept a post-processor only if it adds no token (``encode`` never adds BOS/EOS)."""
    if post is None or post.get("type") == "ByteLevel":
        return
    if post.get("type") == "TemplateProcessing":
        single = post.get("single")
        if isinstance(single, list) and len(single) == 1 and "Sequence" in single[0]:
            return
    raise post.fail("type", f"is {post.get('type')!r} adding tokens to every text: encode here "
                            "adds none")


def _added_tokens(data: _Object, vocab: Mapping[str, int]) -> tuple[dict[str, int], dict[str, int]]:
    """``added_tokens`` split into special ones (matched when allowed) and the others (always)."""
    specials: dict[str, int] = {}
    added: dict[str, int] = {}
    for k, raw in enumerate(data.items("added_tokens") if "added_tokens" in data.value else []):
        token = _Object(raw, data.path, f"added_tokens[{k}]")
        token_id = token.integer("id", minimum=0)
        content = token.string("content")
        for key in ("lstrip", "rstrip", "single_word"):
            if token.flag(key, False):
                raise token.fail(key, "is true: not implemented here")
        if content in vocab and vocab[content] != token_id:
            raise token.fail("id", f"is {token_id}, but model.vocab gives {content!r} the id "
                                   f"{vocab[content]}")
        (specials if token.flag("special", False) else added)[content] = token_id
    return specials, added


def _merge_pairs(model: _Object) -> list[tuple[str, str]]:
    """``model.merges`` as pairs, from either the ``"a b"`` or the ``["a", "b"]`` form."""
    pairs = []
    for k, merge in enumerate(model.items("merges")):
        parts = merge.split(" ") if isinstance(merge, str) else merge
        if not (isinstance(parts, list) and len(parts) == 2 and all(
                isinstance(part, str) and part for part in parts)):
            raise model.fail(f"merges[{k}]", f"is {merge!r}: expected 'a b' or ['a', 'b']")
        pairs.append((parts[0], parts[1]))
    return pairs


def _ranked_merges(
    pairs: Sequence[tuple[str, str]], vocab: Mapping[str, int], fail: Any, field: str = "merges"
) -> tuple[tuple[int, int, int], ...]:
    """Merges as ``(left, right, merged)`` ids, checked so that our loop gives Hugging Face's ids.

    ``Tokenizer`` fuses every occurrence of the best-ranked pair, then looks again; Hugging
    Face fuses one occurrence at a time, always the best-ranked pair then present. The two
    agree when a pair holding a merged token always ranks below the merge that made it, and
    each token is made by one merge only: then no new pair can outrank the merge being done.
    """
    merges: list[tuple[int, int, int]] = []
    made_by: dict[int, int] = {}
    seen: dict[tuple[int, int], int] = {}
    for rank, (left, right) in enumerate(pairs):
        ids = []
        for token in (left, right, left + right):
            if token not in vocab:
                raise fail(f"{field}[{rank}]", f"is ({left!r}, {right!r}): {token!r} is not in "
                                               "the vocabulary")
            ids.append(vocab[token])
        a, b, merged = ids
        if (a, b) in seen:
            raise fail(f"{field}[{rank}]", f"repeats {field}[{seen[a, b]}]")
        if merged in made_by:
            raise fail(f"{field}[{rank}]", f"makes {left + right!r} again, as "
                                           f"{field}[{made_by[merged]}] does")
        seen[a, b] = made_by[merged] = rank
        merges.append((a, b, merged))
    for rank, (a, b, _) in enumerate(merges):
        later = max(made_by.get(a, -1), made_by.get(b, -1))
        if later > rank:
            raise fail(f"{field}[{rank}]", f"uses a token that only the later {field}[{later}] "
                                           "makes: merges applied best first could not do it")
    return tuple(merges)


def _contiguous(by_id: Mapping[int, bytes], fail: Any) -> tuple[bytes, ...]:
    """The token bytes in id order; ids must run from 0 with no gap (they index the model)."""
    size = max(by_id, default=-1) + 1
    missing = [token_id for token_id in range(size) if token_id not in by_id]
    if missing:
        raise fail(f"has no token for id {missing[0]} (ids must run from 0 to {size - 1})")
    return tuple(by_id[token_id] for token_id in range(size))


def _config_fields(
    config: _Object, template: str | None, whole: Mapping[str, int]
) -> dict[str, Any]:
    """The chat template and the declared special tokens from ``tokenizer_config.json``."""
    for key in ("add_bos_token", "add_eos_token"):
        if config.flag(key, False):
            raise config.fail(key, "is true: encode here adds no BOS or EOS token")
    fields: dict[str, Any] = {}
    for key in DECLARED_TOKENS:
        value = config.get(key, None)
        if isinstance(value, dict):  # an AddedToken written out: {"content": ..., ...}
            value = _Object(value, config.path, key).string("content")
        if value is not None and (not isinstance(value, str) or value not in whole):
            raise config.fail(key, f"is {value!r}, which is not an added token of the tokenizer")
        fields[key] = value
    if template is None:
        template = config.get("chat_template", None)
        if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
            named = {entry.get("name"): entry.get("template") for entry in template
                     if isinstance(entry, dict)}
            template = named.get("default")
        if template is not None and not isinstance(template, str):
            raise config.fail("chat_template", f"must be a string, got {_kind(template)}")
    fields["chat_template"] = template
    return fields


# ------------------------------------------------------------------------- GGUF


def read_gguf_tokenizer(
    path: str | Path, pre_tokenizer: Literal["transformers", "llama.cpp"] = "llama.cpp"
) -> BPEVocabulary:
    """The tokenizer in a GGUF file's metadata, split as ``pre_tokenizer``'s tool splits it."""
    path = Path(path)
    return vocabulary_from_gguf(gguf_metadata(path), path, pre_tokenizer)


def vocabulary_from_gguf(
    metadata: Mapping[str, Any],
    path: str | Path,
    pre_tokenizer: Literal["transformers", "llama.cpp"] = "llama.cpp",
) -> BPEVocabulary:
    """A vocabulary from GGUF tokenizer metadata (``{"tokenizer.ggml.tokens": [...], ...}``).

    What becomes what follows transformers' GGUF reader: a control token (type 3) spelled in
    the byte alphabet is a special token, a user-defined one (type 4) an added token; a token
    with characters outside the alphabet stands for its own UTF-8 bytes.
    """
    meta = _Object(dict(metadata), path)
    if pre_tokenizer not in GGUF_PRE_TOKENIZERS:
        raise ValueError(f"pre_tokenizer={pre_tokenizer!r}: expected one of "
                         f"{sorted(GGUF_PRE_TOKENIZERS)}")
    model = meta.string("tokenizer.ggml.model")
    if model != "gpt2":
        raise meta.fail("tokenizer.ggml.model", f"is {model!r}: only 'gpt2' (byte-level BPE) "
                                                "is read here")
    pre = meta.string("tokenizer.ggml.pre")
    known = GGUF_PRE_TOKENIZERS[pre_tokenizer]
    if pre not in known:
        raise meta.fail("tokenizer.ggml.pre", f"is {pre!r}: read here are {sorted(known)}")
    stages, syntax = known[pre], "regex"
    own = meta.string(OWN_PATTERN_KEY, None)
    if own is not None and pre_tokenizer == "llama.cpp":  # the ids the model was trained on
        if own != PRETOKENIZE_PATTERN:
            raise meta.fail(OWN_PATTERN_KEY, "is not this version's PRETOKENIZE_PATTERN: only "
                                             "the project's own pattern is run from a file")
        stages, syntax = (PRETOKENIZE_PATTERN,), "re"
    for key in ("tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token",
                "tokenizer.ggml.add_space_prefix"):
        if meta.flag(key, False):
            raise meta.fail(key, "is true: encode here adds no token and no space")
    tokens = meta.items("tokenizer.ggml.tokens")
    types = meta.items("tokenizer.ggml.token_type") if "tokenizer.ggml.token_type" in metadata \
        else [1] * len(tokens)
    if len(types) != len(tokens) or not all(isinstance(t, str) for t in tokens):
        raise meta.fail("tokenizer.ggml.token_type", "must give one type to each token")
    vocab = {token: token_id for token_id, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise meta.fail("tokenizer.ggml.tokens", "holds a token twice")
    specials: dict[str, int] = {}
    added: dict[str, int] = {}
    token_bytes = []
    for token_id, (token, kind) in enumerate(zip(tokens, types, strict=True)):
        spelled = _unspell(token)
        if kind == GGUF_CONTROL and spelled is not None:
            specials[token] = token_id
            spelled = None  # a special's bytes are its literal text
        elif kind == GGUF_USER_DEFINED:
            added[token] = token_id
            spelled = None
        token_bytes.append(token.encode("utf-8") if spelled is None else spelled)
    byte_ids = tuple(vocab.get(char) for char in BYTE_CHARS)  # a byte without one is dropped
    pairs = []
    for k, merge in enumerate(meta.items("tokenizer.ggml.merges")):
        parts = merge.split(" ") if isinstance(merge, str) else None
        if parts is None or len(parts) != 2 or not all(parts):
            raise meta.fail(f"tokenizer.ggml.merges[{k}]", f"is {merge!r}: expected 'a b'")
        pairs.append((parts[0], parts[1]))
    merges = _ranked_merges(pairs, vocab, meta.fail, "tokenizer.ggml.merges")
    declared = {}
    for name, key in GGUF_DECLARED.items():
        token_id = meta.integer(f"tokenizer.ggml.{key}_token_id", None, minimum=0)
        if token_id is not None and token_id >= len(tokens):
            raise meta.fail(f"tokenizer.ggml.{key}_token_id", f"is {token_id}, past the "
                                                              f"{len(tokens)} tokens")
        declared[name] = None if token_id is None else tokens[token_id]
        if declared[name] is not None and declared[name] not in {**specials, **added}:
            specials[declared[name]] = token_id  # declared, so matched as a whole when allowed
    return BPEVocabulary(
        token_bytes=tuple(token_bytes),
        byte_ids=byte_ids,
        merges=merges,
        split_patterns=stages,
        pattern_syntax=syntax,
        special_tokens=specials,
        added_tokens=added,
        chat_template=_own_template_back(meta.string("tokenizer.chat_template", None)),
        **declared,
    )


def gguf_pre_name(vocabulary: BPEVocabulary) -> str:
    """The ``tokenizer.ggml.pre`` name of ``vocabulary``'s split stages.

    llama.cpp knows a pre-tokenizer only by a name from its own list, each meaning fixed
    regexes; the names read here are inverted (``GGUF_PRE_TOKENIZERS["llama.cpp"]``). The
    project's own pattern has no name there. Its closest is ``"smollm"``: digits one by
    one, as ours, then GPT-2's regex, which cuts letter runs, symbol runs and whitespace
    as ours does. Where GPT-2 cuts *coarser* (a CJK run, with the space before it, is one
    chunk for GPT-2, one chunk per character for us; ``"ab中"`` is one GPT-2 chunk), llama.cpp
    still gives our ids, since no merge of ours spans one of our cuts (training never saw
    such a chunk). Where it cuts *finer* it may not: GPT-2 splits off English contractions
    first, so ``"'the"`` is ``'t`` + ``he`` for llama.cpp but ``'`` + ``the`` for us (other
    ids: the test measures it on the shipped base); and Python's ``re`` and llama.cpp's
    Unicode classes disagree on a few characters
    (``"²"`` is a letter to ``re``'s ``\\w``, a number to ``\\p{N}``). So llama.cpp
    tokenizes nearly, not exactly, as we do; ``OWN_PATTERN_KEY`` records the exact
    pattern, which our own reader runs.
    """
    if vocabulary.pattern_syntax == "re":
        if vocabulary.split_patterns != (PRETOKENIZE_PATTERN,):
            raise ValueError("GGUF can hold the project's own pattern, not another one "
                             "written for Python's re")
        return OWN_PATTERN_PRE
    for name, stages in GGUF_PRE_TOKENIZERS["llama.cpp"].items():
        if stages == vocabulary.split_patterns:
            return name
    raise ValueError(f"no GGUF pre-tokenizer name splits as {list(vocabulary.split_patterns)}"
                     f" (written here: {sorted(GGUF_PRE_TOKENIZERS['llama.cpp'])})")


def gguf_tokenizer_metadata(vocabulary: BPEVocabulary, vocab_size: int) -> dict[str, Any]:
    """The ``tokenizer.*`` GGUF keys for ``vocabulary``, as ``vocabulary_from_gguf`` reads them.

    As llama.cpp's converter writes a byte-level BPE: model ``"gpt2"``, the tokens in the
    byte alphabet, their types (1 normal, 3 control for specials, 4 user-defined for added
    tokens), merges as ``"a b"``, the declared tokens' ids and the chat template (ours gets
    ``chat.CHATML_TEMPLATE``, as ``save_hf_tokenizer`` does). ``add_bos_token`` is false:
    neither our tokenizer nor SmolLM2's starts a text with BOS. A model with more embedding
    rows (``vocab_size``) than tokens gets ``[PAD{id}]`` tokens of type 5 (unused), as the
    converter pads, because llama.cpp needs one token per row.
    """
    spelled, merges = spelled_vocabulary(vocabulary, "GGUF")
    if len(spelled) > vocab_size:
        raise ValueError(f"the tokenizer has {len(spelled)} tokens but the model's vocab_size "
                         f"is {vocab_size}")
    types = [GGUF_CONTROL if token_id in vocabulary.special_tokens.values() else
             GGUF_USER_DEFINED if token_id in vocabulary.added_tokens.values() else GGUF_NORMAL
             for token_id in range(len(spelled))]
    padding = [f"[PAD{token_id}]" for token_id in range(len(spelled), vocab_size)]
    if set(padding) & set(spelled):
        raise ValueError(f"the tokenizer has a token named like padding: {padding[0]!r}...")
    whole = {**vocabulary.special_tokens, **vocabulary.added_tokens}
    metadata: dict[str, Any] = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": gguf_pre_name(vocabulary),
        "tokenizer.ggml.tokens": spelled + padding,
        "tokenizer.ggml.token_type": types + [GGUF_UNUSED] * len(padding),
        "tokenizer.ggml.merges": [f"{a} {b}" for a, b in merges],
    }
    for name, key in GGUF_DECLARED.items():
        if getattr(vocabulary, name) is not None:
            metadata[f"tokenizer.ggml.{key}_token_id"] = whole[getattr(vocabulary, name)]
    metadata["tokenizer.ggml.add_bos_token"] = False
    metadata["tokenizer.chat_template"] = vocabulary.chat_template or CHATML_TEMPLATE
    if vocabulary.pattern_syntax == "re":
        metadata[OWN_PATTERN_KEY] = PRETOKENIZE_PATTERN
    return metadata


# ------------------------------------------------------------------------ writing


def hf_tokenizer_files(vocabulary: BPEVocabulary) -> dict[str, bytes]:
    """The files transformers reads a tokenizer from: name -> contents.

    ``tokenizer.json`` (the ``tokenizers`` library's whole tokenizer), ``tokenizer_config.json``
    (the declared special tokens and the chat template, which transformers 4 reads),
    ``chat_template.jinja`` (the template again, which transformers 5 reads first, so no
    stale copy can win) and ``special_tokens_map.json`` (the declared tokens alone, for tools
    that read only it). The project's own tokenizer gets ``chat.CHATML_TEMPLATE``, which
    renders what ``format_chatml`` does.
    """
    template = vocabulary.chat_template or CHATML_TEMPLATE
    declared = {key: getattr(vocabulary, key) for key in DECLARED_TOKENS
                if getattr(vocabulary, key) is not None}
    config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast", **declared,
                              "add_bos_token": False, "add_eos_token": False,
                              "clean_up_tokenization_spaces": False, "chat_template": template}
    return {
        TOKENIZER_FILE: json_bytes(tokenizer_json(vocabulary), indent=1),
        CONFIG_FILE: json_bytes(config),
        TEMPLATE_FILE: template.encode("utf-8"),
        SPECIAL_TOKENS_FILE: json_bytes(declared),
    }


def save_hf_tokenizer(vocabulary: BPEVocabulary, directory: str | Path) -> None:
    """Write ``hf_tokenizer_files`` into ``directory``, each file atomically."""
    for name, data in hf_tokenizer_files(vocabulary).items():
        write_atomic(Path(directory) / name, data)


def _named_tokens(vocabulary: BPEVocabulary) -> dict[int, tuple[str, bool]]:
    """id -> (text, is special) for every special and added token."""
    named = {token_id: (name, True) for name, token_id in vocabulary.special_tokens.items()}
    named |= {token_id: (name, False) for name, token_id in vocabulary.added_tokens.items()}
    return named


def spelled_vocabulary(
    vocabulary: BPEVocabulary, where: str
) -> tuple[list[str], list[tuple[str, str]]]:
    """Every token as text (id order) and every merge as a pair of texts, best first.

    Both ``tokenizer.json`` and GGUF store a vocabulary this way: an ordinary token in the
    byte alphabet (``spell_bytes``), a special or added token as its own text. A token is
    then found by its text, so two ids may not share one (``where`` names the format in
    the error).
    """
    named = _named_tokens(vocabulary)
    spelled = [
        named[token_id][0] if token_id in named else spell_bytes(data)
        for token_id, data in enumerate(vocabulary.token_bytes)
    ]
    if len(set(spelled)) != len(spelled):
        twice = next(t for t in spelled if spelled.count(t) > 1)
        raise ValueError(f"two ids stand for {twice!r}: {where} maps a token to one id")
    merges = []
    for a, b, merged in vocabulary.merges:
        if spelled[a] + spelled[b] != spelled[merged]:
            raise ValueError(f"merge ({a}, {b}) -> {merged} joins an added token")
        merges.append((spelled[a], spelled[b]))
    return spelled, merges


def tokenizer_json(vocabulary: BPEVocabulary) -> dict[str, Any]:
    """The ``tokenizer.json`` contents for ``vocabulary``.

    Every id is in ``model.vocab``, specials too: ``tokenizers`` gives an added token the
    id the vocabulary has for it, and otherwise the next free id past the vocabulary, which
    would move our specials (256..259) to the end.
    """
    named = _named_tokens(vocabulary)
    spelled, pairs = spelled_vocabulary(vocabulary, "tokenizer.json")
    vocab = {token: token_id for token_id, token in enumerate(spelled)}
    merges = [[a, b] for a, b in pairs]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": token_id, "content": name, "single_word": False, "lstrip": False,
             "rstrip": False, "normalized": False, "special": special}
            for token_id, (name, special) in sorted(named.items())
        ],
        "normalizer": None,
        "pre_tokenizer": _pre_tokenizer_json(vocabulary),
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": merges},
    }


def _pre_tokenizer_json(vocabulary: BPEVocabulary) -> dict[str, Any]:
    """The split stages as ``tokenizers`` steps: Digits or Split each, then ByteLevel."""
    stages = list(vocabulary.split_patterns)
    if vocabulary.pattern_syntax == "re":
        if stages != [PRETOKENIZE_PATTERN]:
            raise ValueError("save_hf can write the project's own pattern, not another one "
                             "written for Python's re")
        stages = [portable_pattern()]
    use_regex = bool(stages) and stages[-1] == GPT2_SPLIT
    if use_regex:
        stages.pop()
    steps: list[dict[str, Any]] = []
    for stage in stages:
        if stage in (DIGITS_ALONE, DIGIT_RUNS):
            steps.append({"type": "Digits", "individual_digits": stage == DIGITS_ALONE})
        else:
            steps.append({"type": "Split", "pattern": {"Regex": stage},
                          "behavior": "Isolated", "invert": False})
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                  "use_regex": use_regex}
    return {"type": "Sequence", "pretokenizers": [*steps, byte_level]} if steps else byte_level


@lru_cache(maxsize=1)
def portable_pattern() -> str:
    """``PRETOKENIZE_PATTERN`` with each class written as the characters ``re`` puts in it.

    Oniguruma (Hugging Face's engine) and the ``regex`` package read the result exactly as
    Python's ``re`` reads the original, whatever their own ``\\w``, ``\\d`` and ``\\s``.
    """
    every = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF)
    spelled = {name: _char_class(every, pattern) for name, pattern in PRETOKENIZE_CLASSES.items()}
    spelled["nonspace"] = "[^" + _char_class(every, PRETOKENIZE_CLASSES["space"])[1:]
    return PRETOKENIZE_TEMPLATE.format(**spelled)


def _char_class(every: str, pattern: str) -> str:
    """A bracket class of exactly the characters ``pattern`` (one character) matches in ``re``."""
    ranges = []
    for run in re.finditer(f"(?:{pattern})+", every):
        first, last = ord(run.group()[0]), ord(run.group()[-1])
        if first < 0xD800 < last:  # the run steps over the surrogates, absent from ``every``
            ranges += [(first, 0xD7FF), (0xE000, last)]
        else:
            ranges.append((first, last))
    return "[" + "".join(
        _class_char(a) if a == b else f"{_class_char(a)}-{_class_char(b)}" for a, b in ranges
    ) + "]"


def _class_char(code: int) -> str:
    """A character inside a bracket class, safe in every engine: ASCII that is not a letter
    or digit as ``\\xHH`` (``&&``, ``[`` and ``-`` mean something to Oniguruma), the rest as
    itself."""
    char = chr(code)
    return f"\\x{code:02x}" if code < 0x80 and not char.isalnum() else char


# ---------------------------------------------------------------------- templates


def render_chat_template(
    vocabulary: BPEVocabulary, messages: Sequence[Any], add_generation_prompt: bool = False
) -> str:
    """``vocabulary.chat_template`` rendered as transformers' ``apply_chat_template`` renders it.

    Messages are passed as plain dicts without ``None`` values, with ``tools`` and
    ``documents`` unset and the declared special tokens (``bos_token``, ...) as variables.
    """
    if vocabulary.chat_template is None:
        raise ValueError("this tokenizer has no chat template")
    if not messages:
        raise ValueError("cannot apply a chat template to an empty conversation")
    plain = [{key: value for key, value in dict(m).items() if value is not None} for m in messages]
    declared = {key: getattr(vocabulary, key) for key in DECLARED_TOKENS
                if getattr(vocabulary, key) is not None}
    return _compiled(vocabulary.chat_template).render(
        messages=plain, tools=None, documents=None,
        add_generation_prompt=add_generation_prompt, **declared,
    )


@lru_cache(maxsize=16)
def _compiled(template: str) -> Any:
    """The template compiled in transformers' environment (module docstring)."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
               separators: Any = None, sort_keys: bool = False) -> str:
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent,
                          separators=separators, sort_keys=sort_keys)

    def strftime_now(format: str) -> str:
        return datetime.now().strftime(format)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env.from_string(template)
