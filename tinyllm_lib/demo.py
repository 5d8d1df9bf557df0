"""``python -m tinyllm_lib demo``: instruction tuning, start to finish, in one command.

The story: the shipped base model knows the synthetic world from pretraining but does not
follow instructions; a short LoRA fine-tune on ChatML conversations teaches it to answer;
exact match on held-back questions measures the change; a sampled chat shows the result.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from .chat import Message
from .checkpoint import load_pretrained
from .config import DATA_DIR, TRAIN_PRESETS, LoRAConfig
from .data import load_conversations, load_task_names, tokenize_conversations
from .evaluate import compare_reports, exact_match, greedy_reply
from .lora import apply_lora, count_parameters, trainable_report
from .model import TinyLLM
from .sampling import SamplingConfig, print_piece, reply
from .tokenizer import Tokenizer
from .train import Trainer

DEMO_LORA = LoRAConfig(rank=8, alpha=16, target_modules="all-linear")
PER_TASK = 6  # evaluation questions per task family


def heading(text: str) -> None:
    print(f"\n== {text} " + "=" * max(0, 70 - len(text)))


def eval_subset(path: Path, per_task: int) -> tuple[list[list[Message]], list[str]]:
    """The first ``per_task`` conversations of every task family in a file."""
    picked: dict[str, int] = {}
    conversations, tasks = [], []
    for messages, task in zip(load_conversations(path), load_task_names(path), strict=True):
        if picked.get(task, 0) < per_task:
            picked[task] = picked.get(task, 0) + 1
            conversations.append(messages)
            tasks.append(task)
    return conversations, tasks


def show_answer(model: TinyLLM, tokenizer: Tokenizer, question: str) -> None:
    reply = greedy_reply(model, tokenizer, [{"role": "user", "content": question}], 32)
    print(f"user:      {question}\nassistant: {reply!r}")


def run_demo(seed: int = 0, data_dir: Path = DATA_DIR) -> None:
    start = time.time()
    torch.manual_seed(seed)
    model, tokenizer = load_pretrained(data_dir / "base")
    heading("1. The base model")
    print(f"TinyLLM with {count_parameters(model)[1]:,} parameters, "
          f"pretrained on the synthetic world's corpus (data/base).")
    conversations, tasks = eval_subset(data_dir / "test.jsonl", PER_TASK)
    question = conversations[0][-2]["content"]
    print("Asked a question in ChatML, the base model merely continues text:")
    show_answer(model, tokenizer, question)

    heading("2. Exact match before fine-tuning")
    before = exact_match(model, tokenizer, conversations, tasks)
    print(before.format_table())

    heading("3. LoRA fine-tuning")
    apply_lora(model, DEMO_LORA)
    print(trainable_report(model))
    max_len = model.config.max_seq_len
    train = tokenize_conversations(tokenizer, load_conversations(data_dir / "train.jsonl"), max_len)
    val = tokenize_conversations(tokenizer, load_conversations(data_dir / "val.jsonl"), max_len)
    config = TRAIN_PRESETS["demo"]
    Trainer(model, train, val[:64], config, pad_id=tokenizer.pad_id, run_name="demo").fit()

    heading("4. Exact match after fine-tuning")
    after = exact_match(model, tokenizer, conversations, tasks)
    print(compare_reports(before, after))
    show_answer(model, tokenizer, question)

    heading("5. A sampled conversation")
    # A cool temperature: after only 250 steps the end-of-reply token is not yet sure after
    # every answer, and at 0.7 the sample ran on past a right answer into number words.
    sampling = SamplingConfig(temperature=0.5, top_k=20, top_p=0.9, max_new_tokens=40, seed=seed)
    messages: list[Message] = []
    # The questions of a two-turn test conversation: a fact, then a follow-up about the
    # same person that only makes sense with the first turn in the context. The model sees
    # its own replies; the test's answers are printed beside them, since a 250-step
    # fine-tune gets some wrong.
    follow_up = conversations[tasks.index("multi_turn")]
    turns = [(m["content"], follow_up[i + 1]["content"])
             for i, m in enumerate(follow_up) if m["role"] == "user"]
    for user, reference in turns:
        messages.append({"role": "user", "content": user})
        print(f"user:      {user}\nassistant: ", end="")
        answer = reply(model, tokenizer, messages, sampling, on_piece=print_piece)
        print(f"   (the test's answer: {reference})")
        messages.append({"role": "assistant", "content": answer})
    print(f"\nDone in {time.time() - start:.0f} s. Next: `tinyllm train --epochs 3`, "
          "`tinyllm eval`, `tinyllm chat`, and the book in book/.")
