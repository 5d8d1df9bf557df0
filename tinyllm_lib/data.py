"""Instruction datasets: from files on disk to padded batches of token ids.

Three common shapes of instruction data are read into one form, a list of ChatML messages
per conversation:

- native JSONL, one ``{"messages": [{"role": ..., "content": ...}, ...]}`` per line;
- Alpaca, ``{"instruction", "input" (optional), "output", "system" (optional)}``: one user
  message (the instruction, then a blank line and the input if there is one) and one reply,
  after the system message if there is one (Stanford's Alpaca has no ``"system"``; the
  optional field is LLaMA-Factory's, the common extension);
- ShareGPT, ``{"conversations": [{"from": "human" | "gpt" | "system", "value": ...}]}``.

Each record's shape is recognised by its fields, so a ``.json`` list or a ``.jsonl`` file
may hold any of them. A bad record stops loading with a ``DatasetError`` that names the
file, the line (JSONL) or record index (JSON), and what is wrong: silently skipping data
hides bugs in the code that wrote it.

The writers go the other way, through the same role table, so that a file they write
loads back as exactly the messages it was written from: ``write_jsonl`` (native),
``write_alpaca`` (single-turn conversations only: Alpaca holds one exchange) and
``write_sharegpt``; the two JSON formats are one array of records per ``.json`` file, as
those datasets ship.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from .chat import EncodedChat, Message, check_messages, encode_chat, split_turns
from .files import json_bytes, jsonl_bytes, read_json, read_jsonl, write_atomic
from .model import IGNORE_INDEX
from .tokenizer import Tokenizer

SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}
"""ShareGPT's speaker names (``"from"``) and the ChatML role each one reads as."""

SHAREGPT_NAMES = {role: name for name, role in reversed(SHAREGPT_ROLES.items())}
"""The name ``to_sharegpt`` writes for each role: the first one ``SHAREGPT_ROLES`` lists for
it (``human``, ``gpt``, ``system``), the names most ShareGPT files use."""


class DatasetError(ValueError):
    """A dataset file, or one of its records, is not valid instruction data."""


def _json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for error messages about JSON files."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def _string_field(record: dict[str, Any], field: str, where: str = "") -> str:
    if field not in record:
        raise ValueError(f"{where}missing field {field!r}")
    value = record[field]
    if not isinstance(value, str):
        raise ValueError(f"{where}field {field!r} must be a string, got {_json_type(value)}")
    return value


def _list_field(record: dict[str, Any], field: str) -> list[Any]:
    value = record[field]
    if not isinstance(value, list):
        raise ValueError(f"field {field!r} must be an array, got {_json_type(value)}")
    return value


def _from_native(record: dict[str, Any]) -> list[Message]:
    messages = _list_field(record, "messages")
    check_messages(messages)
    return [Message(role=m["role"], content=m["content"]) for m in messages]


def _optional_string(record: dict[str, Any], field: str) -> str:
    """An optional Alpaca field: missing, ``null`` and ``""`` all mean "none" (``""``)."""
    return _string_field(record, field) if record.get(field) is not None else ""


def _from_alpaca(record: dict[str, Any]) -> list[Message]:
    instruction = _string_field(record, "instruction")
    extra = _optional_string(record, "input")
    output = _string_field(record, "output")
    system = _optional_string(record, "system")
    user = f"{instruction}\n\n{extra}" if extra else instruction
    head = [Message(role="system", content=system)] if system else []
    return [*head, Message(role="user", content=user), Message(role="assistant", content=output)]


def _from_sharegpt(record: dict[str, Any]) -> list[Message]:
    messages = []
    for i, turn in enumerate(_list_field(record, "conversations")):
        where = f"conversations[{i}]: "
        if not isinstance(turn, dict):
            raise ValueError(f"{where}expected an object, got {_json_type(turn)}")
        speaker = _string_field(turn, "from", where)
        if speaker not in SHAREGPT_ROLES:
            raise ValueError(
                f"{where}unknown role 'from': {speaker!r} (expected one of "
                f"{', '.join(SHAREGPT_ROLES)})"
            )
        value = _string_field(turn, "value", where)
        messages.append(Message(role=SHAREGPT_ROLES[speaker], content=value))
    return messages


def record_to_messages(record: Any) -> list[Message]:
    """One parsed record of any supported shape, as checked ChatML messages.

    Raises ``ValueError`` saying what is wrong; ``load_conversations`` adds where.
    """
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {_json_type(record)}")
    if "messages" in record:
        messages = _from_native(record)
    elif "conversations" in record:
        messages = _from_sharegpt(record)
    elif "instruction" in record:
        messages = _from_alpaca(record)
    else:
        raise ValueError(
            "unknown record shape: expected a 'messages' (native), 'conversations' "
            f"(ShareGPT) or 'instruction' (Alpaca) field, got fields {sorted(record)}"
        )
    check_conversation(messages)
    return messages


def check_conversation(messages: Sequence[Message]) -> None:
    """Raise ``ValueError`` unless ``messages`` is a training conversation: valid messages,
    an optional system message first, then user and assistant alternating, ending with
    the assistant's reply. What the loaders accept is what the writers write."""
    if not messages:
        raise ValueError("empty conversation")
    split_turns(messages)  # checks each message, the order of roles and the last reply


def read_records(path: Path) -> Iterator[tuple[str, Any]]:
    """Yield ``(where, record)`` pairs, ``where`` being "line N" or "record [i]"."""
    if path.suffix not in (".jsonl", ".json"):
        raise DatasetError(f"{path}: unsupported file type {path.suffix!r} (use .jsonl or .json)")
    try:
        if path.suffix == ".jsonl":
            for number, record in read_jsonl(path):
                yield f"line {number}", record
            return
        records = read_json(path)
    except ValueError as err:  # invalid JSON, already naming file, line and column
        raise DatasetError(str(err)) from None
    if not isinstance(records, list):
        raise DatasetError(f"{path}: expected a JSON array of records, got {_json_type(records)}")
    for index, record in enumerate(records):
        yield f"record [{index}]", record


def load_conversations(path: str | Path) -> list[list[Message]]:
    """Every conversation in a native, Alpaca or ShareGPT file (``.jsonl`` or ``.json``).

    The default system message is not added here; ``encode_chat`` adds it when rendering.
    """
    path = Path(path)
    conversations = []
    for where, record in read_records(path):
        try:
            conversations.append(record_to_messages(record))
        except ValueError as err:
            raise DatasetError(f"{path}: {where}: {err}") from None
    return conversations


def load_task_names(path: str | Path, default: str = "all") -> list[str]:
    """The ``"task"`` field of every record in ``path``, in order (``default`` when absent).

    Evaluation reports exact match per task family; the project's own data tags each
    conversation with its family, while Alpaca or ShareGPT files fall under ``default``.
    """
    path = Path(path)
    names = []
    for where, record in read_records(path):
        task = record.get("task", default) if isinstance(record, dict) else default
        if not isinstance(task, str):
            raise DatasetError(f"{path}: {where}: 'task' must be a string, got {_json_type(task)}")
        names.append(task)
    return names


def write_jsonl(path: str | Path, conversations: Sequence[Sequence[Message]]) -> None:
    """Write conversations as native JSONL, one ``{"messages": [...]}`` per line.

    Text is written as UTF-8, not ``\\u`` escapes, so Chinese stays readable in the file.
    """
    write_atomic(path, jsonl_bytes({"messages": list(messages)} for messages in conversations))


def to_alpaca(messages: Sequence[Message]) -> dict[str, str]:
    """One single-turn conversation as an Alpaca record; ``ValueError`` for any other.

    The whole user message becomes ``"instruction"`` with an empty ``"input"``: the reader
    joins the two with a blank line, and a split could not be undone exactly. A system
    message becomes the optional ``"system"`` field; an empty one is refused, since
    ``"system": ""`` reads back as no system message (and so as the default one).
    Conversations of several exchanges do not fit Alpaca; use ShareGPT or native JSONL.
    """
    check_conversation(messages)
    system, exchanges = (messages[0], messages[1:]) if messages[0]["role"] == "system" else (
        None, messages)
    if len(exchanges) != 2:
        raise ValueError(f"Alpaca holds one exchange (user, assistant); this conversation "
                         f"has {len(exchanges) // 2}")
    record = {"instruction": exchanges[0]["content"], "input": "",
              "output": exchanges[1]["content"]}
    if system is not None:
        if not system["content"]:
            raise ValueError("message 0: an empty system message cannot be written to Alpaca "
                             "(\"system\": \"\" reads back as none)")
        record["system"] = system["content"]
    return record


def to_sharegpt(messages: Sequence[Message]) -> dict[str, list[dict[str, str]]]:
    """A conversation as a ShareGPT record, speakers named by ``SHAREGPT_NAMES``."""
    check_conversation(messages)
    return {"conversations": [{"from": SHAREGPT_NAMES[m["role"]], "value": m["content"]}
                              for m in messages]}


def _record(convert: Callable[[Sequence[Message]], Any], index: int,
            messages: Sequence[Message]) -> Any:
    """``convert(messages)``, an error naming the conversation's index."""
    try:
        return convert(messages)
    except ValueError as err:
        raise ValueError(f"conversation {index}: {err}") from None


def is_multi_turn(messages: Sequence[Message]) -> bool:
    """More than one user message: more than Alpaca's single exchange holds."""
    return sum(m.get("role") == "user" for m in messages if isinstance(m, dict)) > 1


def write_alpaca(
    path: str | Path, conversations: Sequence[Sequence[Message]], skip_multi_turn: bool = False
) -> int:
    """Write conversations as an Alpaca ``.json`` array (``to_alpaca``); returns how many
    multi-turn conversations were left out.

    By default a multi-turn conversation is an error naming its index: losing data should
    be asked for. With ``skip_multi_turn`` they are left out and counted instead; any
    other conversation ``to_alpaca`` refuses is still an error.
    """
    records = [_record(to_alpaca, index, messages)
               for index, messages in enumerate(conversations)
               if not (skip_multi_turn and is_multi_turn(messages))]
    write_atomic(path, json_bytes(records, indent=1))
    return len(conversations) - len(records)


def write_sharegpt(path: str | Path, conversations: Sequence[Sequence[Message]]) -> None:
    """Write conversations as a ShareGPT ``.json`` array (``to_sharegpt``)."""
    records = [_record(to_sharegpt, index, messages)
               for index, messages in enumerate(conversations)]
    write_atomic(path, json_bytes(records, indent=1))


def tokenize_conversations(
    tokenizer: Tokenizer, conversations: Sequence[Sequence[Message]], max_len: int | None
) -> list[EncodedChat]:
    """``encode_chat`` on every conversation, each trimmed to ``max_len`` tokens.

    An error names the conversation's index; one that cannot fit raises
    ``ConversationTooLongError`` rather than being dropped, so no data vanishes unseen.
    """
    examples = []
    for index, messages in enumerate(conversations):
        try:
            examples.append(encode_chat(tokenizer, messages, max_len=max_len))
        except ValueError as err:  # keeps the type, e.g. ConversationTooLongError
            raise type(err)(f"conversation {index}: {err}") from None
    return examples


class TrainingExample(Protocol):
    """What the trainer, ``collate`` and ``mean_nll`` need of an example: token ids and
    labels as long as them (``-100`` where a token is not a target; not shifted). A chat's
    ``EncodedChat`` and a pretraining ``Block`` are both one."""

    input_ids: Sequence[int]
    labels: Sequence[int]

    def __len__(self) -> int: ...


@dataclass
class Batch:
    """A right-padded batch; every tensor is ``[batch, seq]`` of dtype long."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            input_ids=self.input_ids.to(device),
            labels=self.labels.to(device),
            attention_mask=self.attention_mask.to(device),
        )


def collate(examples: Sequence[TrainingExample], pad_id: int) -> Batch:
    """Stack examples into one batch, padding each on the right to the longest.

    Padding gets ``pad_id`` as input, ``-100`` as label and 0 in ``attention_mask``.
    Training a causal model needs no mask in the forward pass: every pad comes after all
    of its row's real tokens, and causal attention only looks back, so no real token ever
    attends to a pad; the pads' own outputs are ignored through their -100 labels. The
    mask is kept for counting real tokens and for tools that expect one.
    """
    if not examples:
        raise ValueError("collate: no examples to batch")
    length = max(len(example) for example in examples)
    input_ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example)
        input_ids[row, :n] = torch.tensor(example.input_ids, dtype=torch.long)
        labels[row, :n] = torch.tensor(example.labels, dtype=torch.long)
        attention_mask[row, :n] = 1
    return Batch(input_ids=input_ids, labels=labels, attention_mask=attention_mask)


def epoch_order(num_examples: int, seed: int, epoch: int) -> list[int]:
    """The shuffled example indices of one epoch, the same for a given seed and epoch.

    The order depends on nothing else, in particular not on the micro-batch size, so
    training with batch size 8 and with 4 x 2 accumulation sees the same examples in the
    same order. Each epoch gets its own generator seed (distinct for epochs < 1_000_003).
    """
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_examples, generator=generator).tolist()


def micro_batches(order: Sequence[int], batch_size: int) -> list[list[int]]:
    """Consecutive slices of ``order`` of ``batch_size`` indices (the last may be shorter)."""
    if batch_size < 1:
        raise ValueError(f"micro_batches: batch_size must be >= 1, got {batch_size}")
    return [list(order[i : i + batch_size]) for i in range(0, len(order), batch_size)]
