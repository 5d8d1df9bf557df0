"""Held-out facts answered by a fine-tuned model, per question language and per attribute.

    python experiments/heldout_breakdown.py outputs/experiments/lora-all/adapter

``outcomes.py`` reports one held-out accuracy per run. This splits it: which language of
question, and which kind of fact (city, job, age, ...), the model gets right. A weak cell
points at what the corpus teaches badly; for example, English word answers far below English
number answers showed that a reply, which starts a line, spells the word with other tokens
than running text does. Results go to ``experiments/results/heldout_breakdown.json``, one
entry per adapter.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from tinyllm_lib.checkpoint import load_pretrained
from tinyllm_lib.config import BASE_DIR, DATA_DIR
from tinyllm_lib.data import load_conversations
from tinyllm_lib.evaluate import exact_match
from tinyllm_lib.formats.peft_adapter import load_adapter
from tinyllm_lib.world import LANGS, Person, make_world

RESULTS = Path(__file__).resolve().parent / "results"


def fact_kind(question: str, answer: str, people: Sequence[Person]) -> str:
    """The "<lang> <attribute>" a held-out question asks: whose name it holds, which fact answers.

    A person's facts have distinct values (a lucky number is never the age), so the answer
    names the attribute.
    """
    for person in people:
        for lang in LANGS:
            if person.name.text(lang) in question:
                return next(f"{lang} {key}" for key, value in person.facts.items()
                            if value.text(lang) == answer)
    raise ValueError(f"no held-out person is named in {question!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("adapter", type=Path, help="a LoRA adapter trained on data/base")
    args = parser.parse_args()

    heldout = [p for p in make_world().people if p.heldout]  # data/'s world (default seed)
    conversations = load_conversations(DATA_DIR / "heldout_facts.jsonl")
    kinds = [fact_kind(c[-2]["content"], c[-1]["content"], heldout) for c in conversations]
    model, tokenizer = load_pretrained(BASE_DIR)
    load_adapter(model, args.adapter)
    report = exact_match(model, tokenizer, conversations, kinds)
    total, correct = Counter(report.total), Counter(report.correct)
    for kind in report.total:  # add the per-language sums
        lang = kind.split()[0]
        total[lang] += report.total[kind]
        correct[lang] += report.correct[kind]
    accuracy = {key: round(correct[key] / total[key], 3) for key in sorted(total)}
    for key, value in accuracy.items():
        print(f"{key:18s} {value:6.1%}  ({correct[key]}/{total[key]})")
    saved = RESULTS / "heldout_breakdown.json"
    runs = json.loads(saved.read_text()) if saved.exists() else {}
    runs[str(args.adapter)] = {"accuracy": accuracy, "questions": dict(sorted(total.items()))}
    saved.write_text(json.dumps(runs, indent=2) + "\n")


if __name__ == "__main__":
    main()
