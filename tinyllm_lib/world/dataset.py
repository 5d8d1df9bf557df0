"""The world's files: everything generated from one seed, written out; the corpus read back.

``write_dataset`` writes ``world.json``, ``corpus.jsonl``, one JSONL file per instruction
split and the train split again in the two formats found in the wild (Alpaca, ShareGPT),
each file atomically through ``tinyllm_lib.files``. Keys are sorted, text is UTF-8
(Chinese stays readable) with ``"\\n"`` newlines, so the same seed and config always give
the same bytes.
"""

from __future__ import annotations

from pathlib import Path

from ..data import write_alpaca, write_sharegpt
from ..files import json_bytes, jsonl_bytes, read_jsonl, write_atomic
from .corpus import pretrain_corpus
from .people import DEFAULT_SEED, DataConfig, make_world, world_to_dict
from .tasks import instruction_splits

ALPACA_FILE = "train_alpaca.json"  # the train split's single-turn conversations, as Alpaca
SHAREGPT_FILE = "train_sharegpt.json"  # the whole train split, as ShareGPT


def write_dataset(
    out_dir: str | Path, seed: int = DEFAULT_SEED, config: DataConfig | None = None
) -> dict[str, Path]:
    """Generate the world and write every data file; returns file name -> path.

    Files: ``world.json``, ``corpus.jsonl`` (``{"kind", "text"}`` per document),
    ``train.jsonl``, ``val.jsonl``, ``test.jsonl`` and ``heldout_facts.jsonl``
    (``{"messages", "task", "answer"}`` per conversation). The same seed and config always
    give the same bytes.

    The train conversations are also written as ``train_sharegpt.json`` (all of them) and
    ``train_alpaca.json`` (the single-turn ones: Alpaca holds one exchange, so the
    ``multi_turn`` family is left out), JSON arrays as those datasets ship, for
    practising on the formats other tools use (``train --data data/train_alpaca.json``).
    Their records carry only the messages, not ``task`` or ``answer``.
    """
    config = config or DataConfig()
    out = Path(out_dir)
    world = make_world(seed, config)
    contents = {
        "world.json": json_bytes(world_to_dict(world), indent=1, sort_keys=True),
        "corpus.jsonl": jsonl_bytes(({"kind": d.kind, "text": d.text}
                                     for d in pretrain_corpus(world, config)), sort_keys=True),
    }
    splits = instruction_splits(world, config)
    for split, examples in splits.items():
        contents[f"{split}.jsonl"] = jsonl_bytes((ex.to_json() for ex in examples),
                                                 sort_keys=True)
    paths = {}
    for name, data in contents.items():
        paths[name] = out / name
        write_atomic(paths[name], data)
    train = [ex.to_json()["messages"] for ex in splits["train"]]
    paths[ALPACA_FILE], paths[SHAREGPT_FILE] = out / ALPACA_FILE, out / SHAREGPT_FILE
    write_alpaca(paths[ALPACA_FILE], train, skip_multi_turn=True)
    write_sharegpt(paths[SHAREGPT_FILE], train)
    return paths


def load_corpus(path: str | Path) -> list[str]:
    """The document texts of a ``corpus.jsonl``, with the file and line of any bad record."""
    path = Path(path)
    texts = []
    for number, record in read_jsonl(path):
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise ValueError(f"{path}: line {number}: expected an object with a string 'text'")
        texts.append(record["text"])
    return texts
