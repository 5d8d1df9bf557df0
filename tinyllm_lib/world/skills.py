"""The computed skills: sums, reversing and capitalising words, sorting, counting, translating.

Each skill's answer is computed from its question's content (``apply_op``, ``string_op``,
``sorted_answer``, ...), and each is asked in several templates per language. The
instruction tasks ask with these templates, and so do the corpus's worksheets: a skill
stored only as ``65 + 35 = 100`` is stored in other words and other tokens than the chat's
``What is 65 + 35?`` (see ``corpus._worksheet``).
"""

from __future__ import annotations

import random
import string
from collections.abc import Sequence
from typing import Any

from .splits import Key
from .vocab import OBJECTS, Term

OPS = {"+": Term("plus", "加"), "-": Term("minus", "减")}
_ARITHMETIC_QUESTIONS = {
    "en": ("What is {a} {sym} {b}?", "What is {a} {word} {b}?", "Calculate {a} {sym} {b}.",
           "{a} {sym} {b} = ?"),
    "zh": ("{a}{word}{b}等于多少？", "计算{a} {sym} {b}。", "{a} {sym} {b} 等于几？",
           "{a}{word}{b}是多少？"),
}


def apply_op(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b


def arithmetic_question(a: int, op: str, b: int, lang: str, rng: random.Random) -> str:
    template = rng.choice(_ARITHMETIC_QUESTIONS[lang])
    return template.format(a=a, b=b, sym=op, word=OPS[op].text(lang))


_STRING_QUESTIONS = {
    ("reverse", "en"): ('Reverse the word "{w}".', 'Spell "{w}" backwards.',
                        'Write "{w}" backwards.'),
    ("reverse", "zh"): ("把单词“{w}”倒过来写。", "“{w}”倒过来怎么写？"),
    ("upper", "en"): ('Write "{w}" in uppercase.', 'Convert "{w}" to capital letters.',
                      'What is "{w}" in uppercase?'),
    ("upper", "zh"): ("把“{w}”改成大写字母。", "“{w}”的大写形式是什么？"),
}


def string_op(op: str, word: str) -> str:
    return word[::-1] if op == "reverse" else word.upper()


def string_question(op: str, word: str, lang: str, rng: random.Random) -> str:
    return rng.choice(_STRING_QUESTIONS[op, lang]).format(w=word)


_SORT_QUESTIONS = {
    ("numbers", "up", "en"): ("Sort these numbers from smallest to largest: {items}",
                              "Put these numbers in ascending order: {items}"),
    ("numbers", "down", "en"): ("Sort these numbers from largest to smallest: {items}",
                                "Put these numbers in descending order: {items}"),
    ("words", "up", "en"): ("Sort these words alphabetically: {items}",
                            "Put these words in alphabetical order: {items}"),
    ("numbers", "up", "zh"): ("把这些数从小到大排列：{items}", "按从小到大的顺序排列：{items}"),
    ("numbers", "down", "zh"): ("把这些数从大到小排列：{items}", "按从大到小的顺序排列：{items}"),
    ("words", "up", "zh"): ("把这些单词按字母顺序排列：{items}",),
}


def sort_question(
    kind: str, direction: str, shown: Sequence[Any], lang: str, rng: random.Random
) -> str:
    template = rng.choice(_SORT_QUESTIONS[kind, direction, lang])
    return template.format(items=", ".join(map(str, shown)))


def sorted_answer(items: Sequence[Any], direction: str) -> str:
    return ", ".join(map(str, sorted(items, reverse=direction == "down")))


_COUNT_QUESTIONS = {
    ("letters", "en"): ('How many letters are in the word "{w}"?',
                        'How many letters does "{w}" have?'),
    ("letters", "zh"): ("单词“{w}”有几个字母？", "“{w}”一共有多少个字母？"),
    ("letter", "en"): ('How many times does the letter "{c}" appear in "{w}"?',
                       'Count the letter "{c}" in "{w}".'),
    ("letter", "zh"): ("字母“{c}”在“{w}”里出现了几次？", "“{w}”里有几个字母“{c}”？"),
    ("items", "en"): ("How many items are in this list: {items}?", "Count the items: {items}."),
    ("items", "zh"): ("这个清单里有几样东西：{items}？", "数一数有几样东西：{items}。"),
}


def count_question(key: Key, lang: str, rng: random.Random) -> tuple[str, str]:
    """The question and its answer for a count key: ``("letters", word)``,
    ``("letter", word, letter)`` or ``("items", object indices)``."""
    template = rng.choice(_COUNT_QUESTIONS[key[0], lang])
    if key[0] == "letters":
        return template.format(w=key[1]), str(len(key[1]))
    if key[0] == "letter":
        return template.format(w=key[1], c=key[2]), str(key[1].count(key[2]))
    sep = ", " if lang == "en" else "、"
    return template.format(items=sep.join(OBJECTS[i].text(lang) for i in key[1])), str(len(key[1]))


def letter_to_count(word: str, rng: random.Random) -> str:
    """A letter to count in ``word``: mostly one of its own, sometimes any letter, so that
    the count can be 0. The count task and the corpus both draw with this."""
    return rng.choice(word) if rng.random() < 0.8 else rng.choice(string.ascii_lowercase)


_TRANSLATE_QUESTIONS = {
    ("en2zh", "en"): ('Translate "{w}" into Chinese.', 'What is the Chinese word for "{w}"?'),
    ("en2zh", "zh"): ("“{w}”的中文是什么？", "把“{w}”翻译成中文。"),
    ("zh2en", "en"): ('Translate "{w}" into English.', 'What is the English word for "{w}"?'),
    ("zh2en", "zh"): ("“{w}”的英文是什么？", "把“{w}”翻译成英文。"),
}


def translate_question(direction: str, term: Term, lang: str, rng: random.Random) -> str:
    source = term.en if direction == "en2zh" else term.zh
    return rng.choice(_TRANSLATE_QUESTIONS[direction, lang]).format(w=source)


def translation(direction: str, term: Term) -> str:
    return term.zh if direction == "en2zh" else term.en
