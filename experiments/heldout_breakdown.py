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
from pathlib import Path

from tinyllm_lib.checkpoint import load_pretrained
from tinyllm_lib.cli import BASE_DIR, DATA_DIR
from tinyllm_lib.data import load_conversations
from tinyllm_lib.evaluate import greedy_reply
from tinyllm_lib.lora import load_adapter
from tinyllm_lib.world import ATTRIBUTES, LANGS, make_world

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("adapter", type=Path, help="a LoRA adapter trained on data/base")
    args = parser.parse_args()

    world = make_world()  # the world data/ was generated from (the default seed)
    # Which (language, attribute) a question asks: its person's name and the expected answer.
    kind_of = {
        (person.name.text(lang), person.facts[attr.key].text(lang)): (lang, attr.key)
        for person in world.people if person.heldout for attr in ATTRIBUTES for lang in LANGS
    }
    model, tokenizer = load_pretrained(BASE_DIR)
    load_adapter(model, args.adapter)
    model.eval()
    total, correct = Counter(), Counter()
    for messages in load_conversations(DATA_DIR / "heldout_facts.jsonl"):
        question, expected = messages[-2]["content"], messages[-1]["content"]
        # A person's facts have distinct values (a lucky number is never the age).
        lang, attr = next(kind for (name, value), kind in kind_of.items()
                          if name in question and value == expected)
        got = greedy_reply(model, tokenizer, messages[:-1], max_new_tokens=16).strip()
        for key in (lang, f"{lang} {attr}"):
            total[key] += 1
            correct[key] += got == expected
    accuracy = {key: round(correct[key] / total[key], 3) for key in sorted(total)}
    for key, value in accuracy.items():
        print(f"{key:18s} {value:6.1%}  ({correct[key]}/{total[key]})")
    saved = RESULTS / "heldout_breakdown.json"
    runs = json.loads(saved.read_text()) if saved.exists() else {}
    runs[str(args.adapter)] = {"accuracy": accuracy, "questions": dict(sorted(total.items()))}
    saved.write_text(json.dumps(runs, indent=2) + "\n")


if __name__ == "__main__":
    main()
