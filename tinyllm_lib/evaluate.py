"""Evaluation: how well does a model predict, and does it answer correctly?

Two complementary measures:

- **Perplexity** scores the model's probabilities on reference replies:
  ``exp(total negative log-likelihood / number of label tokens)``. It is the effective
  number of tokens the model hesitates between at each step: a model that spreads its
  probability evenly over a vocabulary of V tokens has perplexity V, a perfect one has 1.
  It is smooth and cheap (one forward pass per batch), but a lower perplexity does not
  guarantee a correct answer.
- **Exact match** lets the model answer each prompt itself (greedy decoding, so the
  result is deterministic) and counts the replies equal to the expected answer, per task.
  It measures what users see, but only works for tasks with one short right answer,
  which is why the project's synthetic tasks are built that way.

Comparing a report before fine-tuning with one after shows what the fine-tuning changed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .chat import Message
from .data import TrainingExample, collate, tokenize_conversations
from .files import read_jsonl
from .model import lm_loss_sum
from .sampling import SamplingConfig, reply
from .tokenizer import Tokenizer


def mean_nll(
    model: nn.Module, examples: Sequence[TrainingExample], batch_size: int = 8
) -> float:
    """Sum of NLL over all label tokens / number of label tokens, over a dataset (nats).

    Summing over tokens first and dividing once weights every token equally; averaging
    per-batch or per-example losses instead would over-weight short examples. Examples are
    batched by length so that little compute goes to padding; the order cannot change
    the sum.
    """
    if batch_size < 1:
        raise ValueError(f"mean_nll: batch_size must be >= 1, got {batch_size}")
    by_length = sorted(examples, key=len)
    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(by_length), batch_size):
                # Pads come after every real token of their row and carry label -100, so
                # under causal attention their id never matters: 0 is always a valid one.
                batch = collate(by_length[start : start + batch_size], pad_id=0).to(device)
                nll, n_tokens = lm_loss_sum(model(batch.input_ids), batch.labels)
                total_nll += float(nll)
                total_tokens += n_tokens
    finally:
        model.train(was_training)
    if total_tokens == 0:
        raise ValueError("mean_nll: the examples have no label tokens to score")
    return total_nll / total_tokens


def perplexity(
    model: nn.Module, examples: Sequence[TrainingExample], batch_size: int = 8
) -> float:
    """``exp(mean_nll)``: the number of equally likely tokens the model is as unsure as."""
    return math.exp(mean_nll(model, examples, batch_size))


@dataclass
class Failure:
    """One wrong answer, kept so that a report shows *how* the model fails."""

    task: str
    question: str
    expected: str
    got: str


@dataclass
class EvalReport:
    """Exact-match counts per task, a few failures, and optionally a perplexity.

    Accuracies are derived from the counts. ``mean_accuracy`` is the mean over tasks,
    each task weighing the same however many examples it has, so a large easy task
    cannot hide a small hard one.
    """

    correct: dict[str, int] = field(default_factory=dict)
    total: dict[str, int] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    perplexity: float | None = None

    @property
    def accuracy(self) -> dict[str, float]:
        return {task: self.correct[task] / n for task, n in self.total.items()}

    @property
    def mean_accuracy(self) -> float:
        accuracies = list(self.accuracy.values())
        return sum(accuracies) / len(accuracies) if accuracies else 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: the fields plus the derived accuracies."""
        return {**asdict(self), "accuracy": self.accuracy, "mean_accuracy": self.mean_accuracy}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalReport:
        """The report ``to_dict`` wrote (derived values are recomputed, not read)."""
        return cls(
            correct=dict(data["correct"]),
            total=dict(data["total"]),
            failures=[Failure(**failure) for failure in data.get("failures", [])],
            perplexity=data.get("perplexity"),
        )

    def format_table(self) -> str:
        width = max([len("mean of tasks"), *map(len, self.total)])
        lines = [f"{'task':<{width}}  correct  total  accuracy"]
        for task, n in self.total.items():
            lines.append(
                f"{task:<{width}}  {self.correct[task]:>7}  {n:>5}  {self.accuracy[task]:>8.1%}"
            )
        lines.append(f"{'mean of tasks':<{width}}  {'':>7}  {'':>5}  {self.mean_accuracy:>8.1%}")
        if self.perplexity is not None:
            lines.append(f"{'perplexity':<{width}}  {'':>7}  {'':>5}  {self.perplexity:>8.2f}")
        return "\n".join(lines)


def compare_reports(before: EvalReport, after: EvalReport,
                    labels: tuple[str, str] = ("before", "after")) -> str:
    """A before/after table: accuracy per task (delta in percentage points) and perplexity.

    A task missing from one report shows ``-``. ``labels`` name the two columns, for
    tables that compare two models rather than one model before and after.
    """
    tasks = list(dict.fromkeys([*before.total, *after.total]))
    width = max([len("mean of tasks"), *map(len, tasks)])
    column = max(8, *map(len, labels))

    def row(name: str, old: float | None, new: float | None, as_percent: bool) -> str:
        scale, unit = (100, "%") if as_percent else (1, "")

        def cell(value: float | None) -> str:
            return "-" if value is None else f"{value * scale:.1f}{unit}"

        delta = "-" if old is None or new is None else f"{(new - old) * scale:+.1f}"
        return f"{name:<{width}}  {cell(old):>{column}}  {cell(new):>{column}}  {delta:>7}"

    lines = [f"{'task':<{width}}  {labels[0]:>{column}}  {labels[1]:>{column}}  {'delta':>7}"]
    lines += [
        row(task, before.accuracy.get(task), after.accuracy.get(task), as_percent=True)
        for task in tasks
    ]
    lines.append(row("mean of tasks", before.mean_accuracy, after.mean_accuracy, True))
    if before.perplexity is not None or after.perplexity is not None:
        lines.append(row("perplexity", before.perplexity, after.perplexity, as_percent=False))
    return "\n".join(lines)


def greedy_reply(
    model: nn.Module, tokenizer: Tokenizer, messages: Sequence[Message], max_new_tokens: int
) -> str:
    """The model's greedy reply to a conversation that ends with a user message.

    The prompt is the ChatML rendering plus the generation prompt ``<|im_start|>assistant``;
    decoding stops at ``<|im_end|>`` (or ``<|endoftext|>``). Older exchanges are dropped
    if the prompt would leave no room to answer.
    """
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=max_new_tokens)
    return reply(model, tokenizer, messages, greedy)


def exact_match(
    model: nn.Module,
    tokenizer: Tokenizer,
    conversations: Sequence[Sequence[Message]],
    tasks: Sequence[str],
    answers: Sequence[str] | None = None,
    max_new_tokens: int = 32,
    failures_per_task: int = 3,
) -> EvalReport:
    """Greedy-answer each conversation's last user message and score exact matches per task.

    Each conversation ends with the reference assistant reply; the model sees everything
    before it. Its reply and the expected answer (``answers[i]`` if given, else that final
    reply) are compared after stripping surrounding whitespace. ``tasks[i]`` names the
    task of conversation ``i``.
    """
    if len(tasks) != len(conversations):
        raise ValueError(
            f"exact_match: {len(conversations)} conversations but {len(tasks)} task names"
        )
    if answers is not None and len(answers) != len(conversations):
        raise ValueError(
            f"exact_match: {len(conversations)} conversations but {len(answers)} answers"
        )
    report = EvalReport()
    for i, (messages, task) in enumerate(zip(conversations, tasks, strict=True)):
        if not messages or messages[-1]["role"] != "assistant":
            raise ValueError(
                f"exact_match: conversation {i} must end with the expected assistant reply"
            )
        expected = (answers[i] if answers is not None else messages[-1]["content"]).strip()
        got = greedy_reply(model, tokenizer, messages[:-1], max_new_tokens).strip()
        report.total[task] = report.total.get(task, 0) + 1
        report.correct[task] = report.correct.get(task, 0) + (got == expected)
        shown = sum(failure.task == task for failure in report.failures)
        if got != expected and shown < failures_per_task:
            report.failures.append(Failure(task, messages[-2]["content"], expected, got))
    return report


def evaluate(
    model: nn.Module,
    tokenizer: Tokenizer,
    conversations: Sequence[Sequence[Message]],
    tasks: Sequence[str],
    max_new_tokens: int = 32,
    batch_size: int = 8,
    failures_per_task: int = 3,
) -> EvalReport:
    """Exact match per task plus the perplexity of the reference replies, in one report."""
    examples = tokenize_conversations(tokenizer, conversations, model.config.max_seq_len)
    report = exact_match(model, tokenizer, conversations, tasks, max_new_tokens=max_new_tokens,
                         failures_per_task=failures_per_task)
    report.perplexity = perplexity(model, examples, batch_size)
    return report


# ----------------------------------------------------------------- forgetting check


@dataclass(frozen=True)
class GeneralPrompt:
    """A question any instruct model should answer, and the words a right reply contains."""

    prompt: str
    expect: tuple[str, ...]


@dataclass(frozen=True)
class GeneralAnswer:
    prompt: str
    reply: str
    right: bool


def load_general_prompts(path: str | Path) -> list[GeneralPrompt]:
    """``{"prompt": str, "expect": [str, ...]}`` per line, errors naming file, line and field."""
    path = Path(path)
    prompts = []
    for number, record in read_jsonl(path):
        where = f"{path}: line {number}"
        if not isinstance(record, dict):
            raise ValueError(f"{where}: expected an object with 'prompt' and 'expect'")
        prompt, expect = record.get("prompt"), record.get("expect")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{where}: field 'prompt' must be a non-empty string")
        if not (isinstance(expect, list) and expect and all(isinstance(e, str) and e
                                                            for e in expect)):
            raise ValueError(f"{where}: field 'expect' must be a list of non-empty strings")
        prompts.append(GeneralPrompt(prompt, tuple(expect)))
    return prompts


def general_answers(
    model: nn.Module, tokenizer: Tokenizer, prompts: Sequence[GeneralPrompt],
    max_new_tokens: int = 48,
) -> list[GeneralAnswer]:
    """Greedy replies to questions outside the fine-tuning data: the forgetting check.

    Fine-tuning on one narrow kind of data can overwrite what a pretrained model knew.
    These questions have no single exact reply (an instruct model answers in a sentence),
    so a reply is right when it contains one of the expected words, in any case. Compare
    the answers before and after fine-tuning: the count that turned wrong is the forgetting.
    """
    answers = []
    for item in prompts:
        text = greedy_reply(model, tokenizer, [{"role": "user", "content": item.prompt}],
                            max_new_tokens)
        right = any(word.casefold() in text.casefold() for word in item.expect)
        answers.append(GeneralAnswer(item.prompt, text, right))
    return answers
