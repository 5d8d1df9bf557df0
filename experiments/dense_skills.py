"""Can more skill text teach the shipped base what it lacks? Continued pretraining, measured.

    python experiments/dense_skills.py --steps 400     # about 5 minutes on 2 CPU cores

``probe_base.py`` found that the first shipped base (commit 6321d15) could not add
two-digit numbers (2%) or sort numbers (0%) in its own pretraining phrasing: its corpus had
a few thousand such lines among everything else. The saved results are from that base.
This experiment continues pretraining the base on the same kinds of lines, many more of
them (``world/corpus.py``'s arithmetic and sorting phrasing), mixed with original corpus
documents so the rest is not forgotten, and probes the two skills again with fresh
numbers. It changes nothing shipped: the model is thrown away, the numbers go
to ``experiments/results/dense_skills.json``, one entry per ``--steps``. It tells the
next base model's corpus what density a skill needs at this model size.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from probe_base import PROBES_PER_SKILL, arithmetic, skill_accuracy, sort_numbers

from tinyllm_lib.checkpoint import load_pretrained
from tinyllm_lib.config import BASE_DIR, DATA_DIR, TrainConfig
from tinyllm_lib.pretrain import pack_documents
from tinyllm_lib.train import Trainer
from tinyllm_lib.world import load_corpus

RESULTS = Path(__file__).resolve().parent / "results"
SKILLS = {"arithmetic (a + b =)": arithmetic, "sort (smallest to largest)": sort_numbers}


def skill_document(rng: random.Random, lines: int = 10) -> str:
    """``lines`` lines of additions or of sorted numbers, as the corpus states them."""
    if rng.random() < 0.5:
        pairs = [(rng.randint(0, 99), rng.randint(0, 99)) for _ in range(lines)]
        return "\n".join(f"{a} + {b} = {a + b}" for a, b in pairs)
    rows = []
    for _ in range(lines):
        numbers = rng.sample(range(100), rng.randint(3, 5))
        rows.append(f"The numbers {', '.join(map(str, numbers))} from smallest to largest: "
                    f"{', '.join(map(str, sorted(numbers)))}.")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400, help="optimizer steps of 16 blocks")
    parser.add_argument("--skill-docs", type=int, default=12_000)
    parser.add_argument("--corpus-docs", type=int, default=3_000)
    args = parser.parse_args()

    model, tokenizer = load_pretrained(BASE_DIR)
    before = {name: skill_accuracy(model, tokenizer, make) for name, make in SKILLS.items()}
    rng = random.Random(1)
    corpus = load_corpus(DATA_DIR / "corpus.jsonl")
    documents = [skill_document(rng) for _ in range(args.skill_docs)]
    documents += rng.sample(corpus, args.corpus_docs)
    rng.shuffle(documents)
    blocks = pack_documents(tokenizer, documents, model.config.max_seq_len)
    config = TrainConfig(epochs=1, batch_size=16, lr=1e-3, warmup_steps=20,
                         max_steps=args.steps, weight_decay=0.1, bf16=True)
    started = time.time()
    Trainer(model, blocks, [], config, pad_id=tokenizer.pad_id, progress=False).fit()
    seconds = time.time() - started
    after = {name: skill_accuracy(model, tokenizer, make) for name, make in SKILLS.items()}
    for name in SKILLS:
        print(f"{name:30s} before {before[name]:5.0%}  after {after[name]:5.0%}")
    saved = RESULTS / "dense_skills.json"
    runs = json.loads(saved.read_text())["runs"] if saved.exists() else []
    run = {
        "command": f"python experiments/dense_skills.py --steps {args.steps}",
        "blocks": len(blocks), "steps": args.steps, "train_seconds": round(seconds),
        "probes_per_skill": PROBES_PER_SKILL, "before": before, "after": after,
    }
    runs = [r for r in runs if r["command"] != run["command"]] + [run]  # one run per command
    RESULTS.mkdir(exist_ok=True)
    saved.write_text(json.dumps({"runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
