"""Perplexity against float64 sums written out by hand; exact match with a scripted model."""

import copy
import importlib
import json
import math

import pytest
import torch
from torch import nn

from tinyllm_lib.chat import EncodedChat, encode_chat
from tinyllm_lib.config import DATA_DIR, PRESETS, ModelConfig
from tinyllm_lib.evaluate import (
    EvalReport,
    Failure,
    GeneralPrompt,
    compare_reports,
    evaluate,
    exact_match,
    general_answers,
    load_general_prompts,
    perplexity,
)
from tinyllm_lib.model import TinyLLM
from tinyllm_lib.tokenizer import Tokenizer

CFG = PRESETS["test"]
TOKENIZER = Tokenizer(merges=[])  # bytes and specials only: ids 0..259


def random_examples() -> list[EncodedChat]:
    """Examples of different lengths whose labels skip a prompt prefix, like chat data."""
    g = torch.Generator().manual_seed(0)
    examples = []
    for length, prompt in [(5, 2), (13, 6), (9, 0), (20, 11)]:
        ids = torch.randint(0, CFG.vocab_size, (length,), generator=g).tolist()
        examples.append(EncodedChat(ids, [-100] * prompt + ids[prompt:]))
    return examples


def perplexity_by_hand(model: TinyLLM, examples: list[EncodedChat]) -> float:
    """One unpadded float64 forward pass per example; log p = logit - logsumexp(logits)."""
    model64 = copy.deepcopy(model).double()
    nll, count = 0.0, 0
    for example in examples:
        with torch.no_grad():
            logits = model64(torch.tensor([example.input_ids]))[0]
        for t in range(1, len(example)):
            label = example.labels[t]
            if label != -100:
                nll -= float(logits[t - 1, label] - torch.logsumexp(logits[t - 1], dim=0))
                count += 1
    return math.exp(nll / count)


def test_perplexity_matches_float64_by_hand():
    torch.manual_seed(0)
    model = TinyLLM(CFG)
    examples = random_examples()
    expected = perplexity_by_hand(model, examples)
    assert perplexity(model, examples, batch_size=3) == pytest.approx(expected, rel=1e-5)
    # Batching and padding change nothing: every token weighs the same.
    assert perplexity(model, examples, batch_size=1) == pytest.approx(expected, rel=1e-5)
    assert model.training  # the training flag is restored


def test_uniform_logits_give_vocab_size():
    model = TinyLLM(CFG)
    with torch.no_grad():
        model.lm_head.weight.zero_()  # every logit 0: the uniform distribution
    assert perplexity(model, random_examples()) == pytest.approx(CFG.vocab_size, rel=1e-6)


def test_perplexity_needs_label_tokens():
    with pytest.raises(ValueError, match="no label tokens"):
        perplexity(TinyLLM(CFG), [EncodedChat([1, 2, 3], [-100, -100, -100])])


class ScriptedBigram(nn.Module):
    """A bigram model: the next token's logits depend only on the current token.

    ``script`` maps a character to the one that must follow it; ``None`` means
    ``<|im_end|>``. It remembers every prompt it is given, for the test to inspect.
    """

    def __init__(self, script: dict[str, str | None], max_seq_len: int = 256) -> None:
        super().__init__()
        self.config = ModelConfig(
            vocab_size=TOKENIZER.vocab_size, hidden_size=8, num_layers=1, num_heads=1,
            max_seq_len=max_seq_len,
        )
        self.table = nn.Parameter(torch.zeros(TOKENIZER.vocab_size, TOKENIZER.vocab_size))
        self.prompts: list[list[int]] = []
        with torch.no_grad():
            for current, following in script.items():
                nxt = TOKENIZER.im_end_id if following is None else ord(following)
                self.table[ord(current), nxt] = 10.0

    def forward(self, input_ids: torch.Tensor, cache=None) -> torch.Tensor:
        if cache is None or cache.length == 0:
            self.prompts.append(input_ids[0].tolist())
        if cache is not None:
            cache.length += input_ids.shape[1]
        return self.table[input_ids]


ANSWERS_42 = {"\n": "4", "4": "2", "2": None}  # after the generation prompt: "42<|im_end|>"


def chat(question: str, answer: str, history: tuple[str, ...] = ()) -> list[dict]:
    messages = []
    for i, text in enumerate(history):
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
    return [*messages, {"role": "user", "content": question},
            {"role": "assistant", "content": answer}]


CONVERSATIONS = [
    chat("2 + 40?", "42"),
    chat("1 + 40?", "41"),
    chat("Say 42.", " 42\n"),  # surrounding whitespace does not count
    chat("And again?", "42", history=("Say 42.", "42")),
]
TASKS = ["sum", "sum", "echo", "echo"]


def test_exact_match_scores_the_greedy_replies():
    model = ScriptedBigram(ANSWERS_42)
    report = exact_match(model, TOKENIZER, CONVERSATIONS, TASKS)
    assert report.total == {"sum": 2, "echo": 2}
    assert report.correct == {"sum": 1, "echo": 2}
    assert report.accuracy == {"sum": 0.5, "echo": 1.0}
    assert report.mean_accuracy == 0.75
    assert report.failures == [Failure("sum", "1 + 40?", "41", "42")]
    # The model saw each conversation without its last reply, plus the generation prompt.
    for messages, prompt in zip(CONVERSATIONS, model.prompts, strict=True):
        expected = encode_chat(TOKENIZER, messages[:-1], add_generation_prompt=True).input_ids
        assert prompt == expected


def test_exact_match_with_given_answers_and_a_model_that_never_stops():
    answers = ["42", "42", "43", "42"]
    report = exact_match(ScriptedBigram(ANSWERS_42), TOKENIZER, CONVERSATIONS, TASKS, answers)
    assert report.correct == {"sum": 2, "echo": 1}
    babbler = ScriptedBigram({"\n": "4", "4": "2", "2": "2"})
    report = exact_match(babbler, TOKENIZER, CONVERSATIONS, TASKS, max_new_tokens=5,
                         failures_per_task=1)
    assert report.correct == {"sum": 0, "echo": 0}
    assert [f.got for f in report.failures] == ["42222", "42222"]  # cut at max_new_tokens


def test_exact_match_rejects_bad_input():
    model = ScriptedBigram(ANSWERS_42)
    with pytest.raises(ValueError, match="4 conversations but 3 task names"):
        exact_match(model, TOKENIZER, CONVERSATIONS, TASKS[:3])
    with pytest.raises(ValueError, match="conversation 1 must end"):
        exact_match(model, TOKENIZER, [CONVERSATIONS[0], CONVERSATIONS[0][:-1]], TASKS[:2])


def test_evaluate_adds_the_perplexity_of_the_reference_replies():
    model = ScriptedBigram(ANSWERS_42)
    report = evaluate(model, TOKENIZER, CONVERSATIONS, TASKS)
    assert report.correct == {"sum": 1, "echo": 2}
    # By hand: a bigram's log-probability of each labelled token given the one before.
    table = model.table.detach().double()
    nll, count = 0.0, 0
    for messages in CONVERSATIONS:
        encoded = encode_chat(TOKENIZER, messages)
        for t in range(1, len(encoded)):
            if encoded.labels[t] != -100:
                row = table[encoded.input_ids[t - 1]]
                nll -= float(row[encoded.labels[t]] - torch.logsumexp(row, dim=0))
                count += 1
    assert report.perplexity == pytest.approx(math.exp(nll / count), rel=1e-6)


def test_report_round_trip_and_tables():
    before = EvalReport(correct={"sum": 1, "echo": 2}, total={"sum": 2, "echo": 2},
                        failures=[Failure("sum", "1 + 40?", "41", "42")], perplexity=12.5)
    after = EvalReport(correct={"sum": 2, "echo": 1, "new": 1},
                       total={"sum": 2, "echo": 2, "new": 1})
    data = json.loads(json.dumps(before.to_dict()))
    assert data["accuracy"] == {"sum": 0.5, "echo": 1.0} and data["mean_accuracy"] == 0.75
    assert EvalReport.from_dict(data) == before

    table = before.format_table().splitlines()
    assert table[1].split() == ["sum", "1", "2", "50.0%"]
    assert table[-2].split() == ["mean", "of", "tasks", "75.0%"]
    assert table[-1].split() == ["perplexity", "12.50"]

    lines = compare_reports(before, after).splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in lines}
    assert rows["sum"] == ["50.0%", "100.0%", "+50.0"]
    assert rows["echo"] == ["100.0%", "50.0%", "-50.0"]
    assert rows["new"] == ["-", "100.0%", "-"]
    assert rows["perplexity"] == ["12.5", "-", "-"]
    header = compare_reports(before, after, labels=("random weights", "pretrained")).splitlines()[0]
    assert header.split() == ["task", "random", "weights", "pretrained", "delta"]


# ----------------------------------------------------------------- forgetting check


def test_general_prompts_file_loads_and_bad_lines_are_named(tmp_path):
    prompts = load_general_prompts(DATA_DIR / "general_prompts.jsonl")
    assert len(prompts) == 12 and prompts[0] == GeneralPrompt("What is the capital of France?",
                                                             ("Paris",))
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "Hi?", "expect": ["hello"]}\n{"prompt": "Yo?", "expect": []}\n')
    with pytest.raises(ValueError, match=r"prompts\.jsonl: line 2: field 'expect'"):
        load_general_prompts(path)
    path.write_text('{"expect": ["x"]}\n')
    with pytest.raises(ValueError, match=r"prompts\.jsonl: line 1: field 'prompt'"):
        load_general_prompts(path)


def test_general_answers_are_right_when_they_contain_an_expected_word(monkeypatch):
    replies = {"Capital?": "The capital is PARIS.", "Week?": "A week has seven days",
               "Sky?": "red"}
    module = importlib.import_module("tinyllm_lib.evaluate")  # the package exports evaluate()
    monkeypatch.setattr(module, "greedy_reply",
                        lambda model, tok, messages, n: replies[messages[0]["content"]])
    prompts = [GeneralPrompt("Capital?", ("Paris",)), GeneralPrompt("Week?", ("7", "seven")),
               GeneralPrompt("Sky?", ("blue",))]
    answers = general_answers(None, None, prompts)
    assert [(a.prompt, a.right) for a in answers] == [
        ("Capital?", True), ("Week?", True), ("Sky?", False)]
    assert answers[0].reply == "The capital is PARIS."
