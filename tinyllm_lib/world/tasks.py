"""Instruction data: ChatML conversations in task families with short, exact answers.

Each ``Example`` is tagged with its family (``task``) and its expected reply (``answer``),
so exact match can be measured family by family. A ``TaskFamily`` is the keys its
questions are about (see ``splits``) and how to ask about one key; ``instruction_splits``
splits each family's keys and draws the train/val/test examples from them.

The ``heldout_facts`` split asks about people whose facts are in the pretraining corpus but
in no instruction example and no corpus Q/A. Answering them measures whether fine-tuning
taught the model to *extract* what pretraining stored.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .facts import question, render_template
from .people import ATTRIBUTE_BY_KEY, ATTRIBUTES, DataConfig, World
from .skills import (
    apply_op,
    arithmetic_question,
    count_question,
    letter_to_count,
    sort_question,
    sorted_answer,
    string_op,
    string_question,
    translate_question,
    translation,
)
from .splits import SPLITS, Key, split_fact_pairs, split_keys
from .vocab import DICTIONARY, LANGS, OBJECTS, SPELLING_WORDS, Term

TASKS = (
    "facts", "arithmetic", "string", "sort", "count", "translate", "system_format", "multi_turn",
)
HELDOUT_TASK = "heldout_facts"

Turn = tuple[str, str]  # (role, content)


@dataclass(frozen=True)
class Example:
    """One instruction conversation; ``answer`` is the exact expected last reply."""

    task: str
    messages: tuple[Turn, ...]
    answer: str

    def to_json(self) -> dict[str, Any]:
        return {
            "answer": self.answer,
            "messages": [{"role": role, "content": content} for role, content in self.messages],
            "task": self.task,
        }


def _chat(task: str, *turns: str, system: str | None = None) -> Example:
    """An example from alternating user/assistant texts; the last one is the answer."""
    messages = [("system", system)] if system is not None else []
    messages += [("user" if i % 2 == 0 else "assistant", t) for i, t in enumerate(turns)]
    return Example(task, tuple(messages), turns[-1])


@dataclass
class TaskFamily:
    """The keys a family's questions are about, and how to ask about one key."""

    name: str
    keys: list[Key]
    render: Callable[[Key, random.Random], Example]


def _sample_keys(rng: random.Random, count: int, draw: Callable[[], Key]) -> list[Key]:
    """``count`` distinct keys from a space too big to list."""
    keys: dict[Key, None] = {}
    while len(keys) < count:
        keys[draw()] = None
    return list(keys)


def _facts_family(world: World, pairs: list[tuple[int, str]]) -> TaskFamily:
    def render(key: Key, rng: random.Random) -> Example:
        pid, attr_key = key
        person, attr, lang = world.person(pid), ATTRIBUTE_BY_KEY[attr_key], rng.choice(LANGS)
        return _chat("facts", question(person, attr, lang, rng),
                     person.facts[attr_key].text(lang))

    return TaskFamily("facts", list(pairs), render)


def _arithmetic_family() -> TaskFamily:
    """Addition and subtraction of numbers below 100; differences are never negative."""
    keys = [(a, "+", b) for a in range(100) for b in range(100)]
    keys += [(a, "-", b) for a in range(100) for b in range(a + 1)]

    def render(key: Key, rng: random.Random) -> Example:
        a, op, b = key
        return _chat("arithmetic", arithmetic_question(a, op, b, rng.choice(LANGS), rng),
                     str(apply_op(a, op, b)))

    return TaskFamily("arithmetic", keys, render)


def _string_family() -> TaskFamily:
    keys = [(op, w) for op in ("reverse", "upper") for w in SPELLING_WORDS]

    def render(key: Key, rng: random.Random) -> Example:
        op, word = key
        return _chat("string", string_question(op, word, rng.choice(LANGS), rng),
                     string_op(op, word))

    return TaskFamily("string", keys, render)


def _sort_family(rng: random.Random, count: int) -> TaskFamily:
    """Sort 3-5 numbers (either direction) or words; a key is the sorted items."""

    def draw() -> Key:
        size = rng.randint(3, 5)
        if rng.random() < 0.6:
            return ("numbers", rng.choice(("up", "down")), tuple(sorted(rng.sample(range(100),
                                                                                   size))))
        return ("words", "up", tuple(sorted(rng.sample(SPELLING_WORDS, size))))

    def render(key: Key, rng: random.Random) -> Example:
        kind, direction, items = key
        shown = list(items)
        rng.shuffle(shown)
        return _chat("sort", sort_question(kind, direction, shown, rng.choice(LANGS), rng),
                     sorted_answer(items, direction))

    return TaskFamily("sort", _sample_keys(rng, count, draw), render)


def _count_family(rng: random.Random, count: int) -> TaskFamily:
    """Count the letters of a word, one letter in a word, or the items of a list."""
    letters_keys = [("letters", w) for w in SPELLING_WORDS]

    def draw() -> Key:
        if rng.random() < 0.5:
            word = rng.choice(SPELLING_WORDS)
            return ("letter", word, letter_to_count(word, rng))
        return ("items", tuple(rng.sample(range(len(OBJECTS)), rng.randint(2, 8))))

    def render(key: Key, rng: random.Random) -> Example:
        return _chat("count", *count_question(key, rng.choice(LANGS), rng))

    return TaskFamily("count", letters_keys + _sample_keys(rng, count, draw), render)


def _translate_family() -> TaskFamily:
    """A key is a dictionary entry, asked in either direction, so a val/test word is never
    translated in train, not even the other way round."""
    keys = list(range(len(DICTIONARY)))

    def render(key: Key, rng: random.Random) -> Example:
        direction, term = rng.choice(("en2zh", "zh2en")), DICTIONARY[key]
        return _chat("translate", translate_question(direction, term, rng.choice(LANGS), rng),
                     translation(direction, term))

    return TaskFamily("translate", keys, render)


SYSTEM_PROMPTS = {
    "zh": Term("Always answer in Chinese.", "请用中文回答。"),
    "en": Term("Always answer in English.", "请用英文回答。"),
    "upper": Term("Answer in uppercase letters only.", "只用大写英文字母回答。"),
    "json": Term('Answer in JSON of the form {"answer": "..."}.',
                 '用JSON格式回答，形如 {"answer": "..."}。'),
}


def _system_format_family(
    world: World, fact_pairs: list[tuple[int, str]], translate_keys: list[Key],
    rng: random.Random, arithmetic_count: int,
) -> TaskFamily:
    """Obey the system prompt: the same content, answered in a language, case or JSON.

    ``zh``: an English question answered in Chinese. ``en``: a Chinese question answered in
    English. ``upper``: an English word, in capitals. ``json``: ``{"answer": "..."}``.
    """
    keys: list[Key] = []
    for pid, attr_key in fact_pairs:
        styles = ("zh", "en", "json") if ATTRIBUTE_BY_KEY[attr_key].is_number else (
            "zh", "en", "json", "upper")
        keys += [(style, "fact", pid, attr_key) for style in styles]
    keys += [("upper", "word", i) for i in translate_keys]
    keys += _sample_keys(rng, arithmetic_count, lambda: (
        "json", "sum", *sorted((rng.randint(0, 99), rng.randint(0, 99)), reverse=True)))

    def render(key: Key, rng: random.Random) -> Example:
        style, kind = key[0], key[1]
        system = SYSTEM_PROMPTS[style].text(rng.choice(LANGS))
        if kind == "fact":
            person, attr = world.person(key[2]), ATTRIBUTE_BY_KEY[key[3]]
            lang = {"zh": "en", "en": "zh", "upper": "en"}.get(style, rng.choice(LANGS))
            value = person.facts[attr.key]
            text, answer = question(person, attr, lang, rng), value.text(lang)
            if style in ("zh", "en"):
                answer = value.text(style)
        elif kind == "word":
            term = DICTIONARY[key[2]]
            text = translate_question("zh2en", term, rng.choice(LANGS), rng)
            answer = term.en
        else:
            a, b = key[2], key[3]
            op = rng.choice(("+", "-"))
            text, answer = (arithmetic_question(a, op, b, rng.choice(LANGS), rng),
                            str(apply_op(a, op, b)))
        if style == "upper":
            answer = answer.upper()
        if style == "json":
            answer = json.dumps({"answer": answer}, ensure_ascii=False)
        return _chat("system_format", text, answer, system=system)

    return TaskFamily("system_format", keys, render)


_MULTI_TURN_FOLLOW_UPS = {
    "arith": {"+": Term("Now add {c} to that.", "再加{c}呢？"),
              "-": Term("Now subtract {c} from that.", "再减{c}呢？")},
    "translate": Term('And "{w}"?', "那“{w}”呢？"),
    "string": Term("Now write that in uppercase.", "再把它改成大写。"),
}


def _multi_turn_family(
    world: World, fact_pairs: list[tuple[int, str]], translate_keys: list[Key],
    string_keys: list[Key], rng: random.Random, sampled_count: int,
) -> TaskFamily:
    """A second question that only makes sense with the first turn in view."""
    by_person: dict[int, list[str]] = {}
    for pid, attr_key in fact_pairs:
        by_person.setdefault(pid, []).append(attr_key)
    keys: list[Key] = [
        ("facts", pid, a1, a2)
        for pid, attrs in by_person.items() for a1 in attrs for a2 in attrs if a1 != a2
    ]
    keys += [("string", w) for op, w in string_keys if op == "reverse"]

    def draw_arith() -> Key:
        a, b, c = rng.randint(0, 99), rng.randint(0, 99), rng.randint(1, 20)
        op = rng.choice(("+", "-"))
        if op == "-":
            a, b = max(a, b), min(a, b)
        op2 = "-" if apply_op(a, op, b) >= c and rng.random() < 0.5 else "+"
        return ("arith", a, op, b, op2, c)

    keys += _sample_keys(rng, sampled_count, draw_arith)

    def draw_translate() -> Key:
        return ("translate", rng.choice(("en2zh", "zh2en")), *rng.sample(translate_keys, 2))

    keys += _sample_keys(rng, sampled_count, draw_translate)

    def render(key: Key, rng: random.Random) -> Example:
        lang = rng.choice(LANGS)
        if key[0] == "facts":
            person = world.person(key[1])
            first, second = ATTRIBUTE_BY_KEY[key[2]], ATTRIBUTE_BY_KEY[key[3]]
            follow = render_template(rng.choice(second.follow_ups[lang]), person, second, lang,
                             person.name.text(lang))
            return _chat("multi_turn", question(person, first, lang, rng),
                         person.facts[first.key].text(lang), follow,
                         person.facts[second.key].text(lang))
        if key[0] == "arith":
            _, a, op, b, op2, c = key
            first = apply_op(a, op, b)
            follow = _MULTI_TURN_FOLLOW_UPS["arith"][op2].text(lang).format(c=c)
            return _chat("multi_turn", arithmetic_question(a, op, b, lang, rng), str(first),
                         follow, str(apply_op(first, op2, c)))
        if key[0] == "translate":
            _, direction, i, j = key
            first, second = DICTIONARY[i], DICTIONARY[j]
            shown = second.en if direction == "en2zh" else second.zh
            follow = _MULTI_TURN_FOLLOW_UPS["translate"].text(lang).format(w=shown)
            return _chat("multi_turn", translate_question(direction, first, lang, rng),
                         translation(direction, first), follow, translation(direction, second))
        word = key[1]
        return _chat("multi_turn", string_question("reverse", word, lang, rng), word[::-1],
                     _MULTI_TURN_FOLLOW_UPS["string"].text(lang), word[::-1].upper())

    return TaskFamily("multi_turn", keys, render)


def _draw_examples(
    family: TaskFamily, keys: Sequence[Key], count: int, rng: random.Random,
    seen: set[tuple[Turn, ...]],
) -> list[Example]:
    """``count`` examples never seen before, visiting the keys in shuffled rounds.

    Rounds spread the examples evenly over the keys; ``seen`` spans all splits, so no
    conversation is in two of them.
    """
    examples: list[Example] = []
    queue: list[Key] = []
    for _ in range(50 * count + len(keys)):
        if len(examples) == count:
            break
        if not queue:
            queue = list(keys)
            rng.shuffle(queue)
        example = family.render(queue.pop(), rng)
        if example.messages not in seen:
            seen.add(example.messages)
            examples.append(example)
    if len(examples) < count:
        raise ValueError(
            f"task {family.name!r}: only {len(examples)} distinct examples from {len(keys)} "
            f"keys, asked for {count}; lower the count in DataConfig"
        )
    return examples


def instruction_splits(world: World, config: DataConfig | None = None) -> dict[str, list[Example]]:
    """The train/val/test instruction examples and the ``heldout_facts`` questions.

    Each family's keys are split before any example is drawn, so val/test ask about things
    (facts, words, sums) that no train example of that family asks about.
    """
    config = config or DataConfig()
    rng = random.Random(f"instructions-{world.seed}")
    fact_split = split_fact_pairs(world, config)
    per_task = config.train_per_task + config.val_per_task + config.test_per_task
    base = {
        "facts": _facts_family(world, [p for s in SPLITS for p in fact_split[s]]),
        "arithmetic": _arithmetic_family(),
        "string": _string_family(),
        "sort": _sort_family(rng, 4 * per_task),
        "count": _count_family(rng, 4 * per_task),
        "translate": _translate_family(),
    }
    key_splits = {"facts": fact_split}
    key_splits |= {
        name: split_keys(family.keys, rng, config, name)
        for name, family in base.items() if name != "facts"
    }
    # The composite families reuse only train facts and train words, so facts and
    # translate val/test stay unseen in every train example.
    families = dict(base)
    families["system_format"] = _system_format_family(
        world, fact_split["train"], key_splits["translate"]["train"], rng, per_task)
    families["multi_turn"] = _multi_turn_family(
        world, fact_split["train"], key_splits["translate"]["train"],
        key_splits["string"]["train"], rng, per_task)
    for name in ("system_format", "multi_turn"):
        key_splits[name] = split_keys(families[name].keys, rng, config, name)

    seen: set[tuple[Turn, ...]] = set()
    splits: dict[str, list[Example]] = {s: [] for s in SPLITS}
    for name in TASKS:
        counts = {
            "test": config.test_per_task, "val": config.val_per_task,
            "train": config.train_facts if name == "facts" else config.train_per_task,
        }
        for split in ("test", "val", "train"):
            splits[split] += _draw_examples(families[name], key_splits[name][split],
                                            counts[split], rng, seen)
    rng.shuffle(splits["train"])
    splits[HELDOUT_TASK] = []
    for person in world.people:
        if person.heldout:
            for attr in ATTRIBUTES:
                for lang in LANGS:
                    splits[HELDOUT_TASK].append(_chat(
                        HELDOUT_TASK, question(person, attr, lang, rng),
                        person.facts[attr.key].text(lang)))
    return splits
