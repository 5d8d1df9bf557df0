"""LoRA on a real model: SmolLM2-135M-Instruct on the world's tasks, and what it forgets.

    python experiments/real_model.py                 # the full run (results below)
    python experiments/real_model.py --steps 40 --per-task 8 --out /tmp/short.json

SmolLM2 is an instruct model that has never seen the synthetic world. Exact match on the
test split (all 400 conversations, 50 per task family) before and after a LoRA fine-tune
on the train split shows what the adapter teaches; the general prompts
(``data/general_prompts.jsonl``: capitals, planets, a French greeting, ...) answered
before and after show what it costs. Writes ``experiments/results/real_model.json``,
which chapter 7 ("A real model") plots and tabulates.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from tinyllm_lib.checkpoint import SMOLLM2, load_pretrained
from tinyllm_lib.config import DATA_DIR, LoRAConfig, TrainConfig
from tinyllm_lib.data import load_conversations, load_task_names, tokenize_conversations
from tinyllm_lib.evaluate import exact_match, general_answers, load_general_prompts
from tinyllm_lib.lora import apply_lora, count_parameters
from tinyllm_lib.train import Trainer

RESULTS = Path(__file__).parent / "results" / "real_model.json"
LORA = LoRAConfig(rank=8, alpha=16, target_modules="all-linear")
TRAIN = TrainConfig(batch_size=8, lr=1e-3, warmup_steps=20, eval_every=100, max_steps=300)
MAX_LEN = 128  # tokens per conversation: the longest train conversation takes 104


def first_per_task(path: Path, per_task: int | None) -> tuple[list, list[str]]:
    """The test conversations and their families, the first ``per_task`` of each (None: all)."""
    picked: dict[str, int] = {}
    conversations, tasks = [], []
    for messages, task in zip(load_conversations(path), load_task_names(path), strict=True):
        if per_task is None or picked.get(task, 0) < per_task:
            picked[task] = picked.get(task, 0) + 1
            conversations.append(messages)
            tasks.append(task)
    return conversations, tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=TRAIN.max_steps)
    parser.add_argument("--per-task", type=int, default=None,
                        help="test conversations per family (default: all 50)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.manual_seed(0)
    start = time.time()
    model, tokenizer = load_pretrained(SMOLLM2, device="cpu")
    conversations, tasks = first_per_task(DATA_DIR / "test.jsonl", args.per_task)
    prompts = load_general_prompts(DATA_DIR / "general_prompts.jsonl")

    before = exact_match(model, tokenizer, conversations, tasks)
    general_before = general_answers(model, tokenizer, prompts)
    print(before.format_table(), f"\ngeneral prompts right: "
          f"{sum(a.right for a in general_before)}/{len(prompts)} ({time.time() - start:.0f} s)")

    apply_lora(model, LORA)
    trainable, total = count_parameters(model)
    train = tokenize_conversations(tokenizer, load_conversations(DATA_DIR / "train.jsonl"),
                                   MAX_LEN)
    val = tokenize_conversations(tokenizer, load_conversations(DATA_DIR / "val.jsonl"), MAX_LEN)
    config = replace(TRAIN, max_steps=args.steps, eval_every=min(TRAIN.eval_every, args.steps))
    train_start = time.time()
    result = Trainer(model, train, val[:64], config, pad_id=tokenizer.pad_id,
                     run_name="real_model", device="cpu").fit()
    train_seconds = time.time() - train_start
    model.eval()

    after = exact_match(model, tokenizer, conversations, tasks)
    general_after = general_answers(model, tokenizer, prompts)
    changed = sum(a.right != b.right for a, b in zip(general_before, general_after, strict=True))
    print(after.format_table())
    results = {
        "command": "python experiments/real_model.py"
                   + (f" --steps {args.steps}" if args.steps != TRAIN.max_steps else "")
                   + (f" --per-task {args.per_task}" if args.per_task else ""),
        "lora": asdict(LORA), "train": asdict(config), "max_len": MAX_LEN,
        "trainable_parameters": trainable, "total_parameters": total,
        "train_seconds": round(train_seconds, 1), "total_seconds": round(time.time() - start, 1),
        "before": before.to_dict(), "after": after.to_dict(),
        "mean_before": before.mean_accuracy, "mean_after": after.mean_accuracy,
        "history": [asdict(record) for record in result.history],
        "general": [{"prompt": b.prompt, "before": b.reply, "after": a.reply,
                     "right_before": b.right, "right_after": a.right}
                    for b, a in zip(general_before, general_after, strict=True)],
        "general_changed": changed,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n",
                        encoding="utf-8")
    print(f"mean exact match {before.mean_accuracy:.1%} -> {after.mean_accuracy:.1%}; general "
          f"prompts right {sum(a.right for a in general_before)} -> "
          f"{sum(a.right for a in general_after)} of {len(prompts)}, {changed} changed; "
          f"{results['total_seconds']:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
