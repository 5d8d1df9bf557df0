"""The pretraining corpus: every fact stated many ways, and text for every skill.

Every fact is stated many ways: several templates per attribute and language, shuffled
sentence order, profile cards, stories, bilingual pairs, lists by city. Allen-Zhu and Li
(2023, "Physics of Language Models 3.1") found that a model can be fine-tuned to *answer
questions* about facts it read in pretraining only when pretraining stated them with such
variety; one fixed biography per person is memorised word by word but the knowledge stays
locked in it. A little plain-text question/answer text about some people helps too.

General documents teach what the instruction tasks build on (numbers, sums, spelling,
sorting, counting, the dictionary, the alphabet), in the shares of ``_GENERAL_KINDS``.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .facts import fact_sentence, fact_value, pick_template, pronoun_sentence, question
from .people import ATTRIBUTE_BY_KEY, ATTRIBUTES, Attribute, DataConfig, Person, World
from .skills import (
    OPS,
    apply_op,
    arithmetic_question,
    count_question,
    letter_to_count,
    sort_question,
    sorted_answer,
    string_question,
)
from .splits import split_fact_pairs
from .vocab import (
    DICTIONARY,
    LANGS,
    OBJECTS,
    SPELLING_WORDS,
    Term,
    number_to_chinese,
    number_to_english,
)


@dataclass(frozen=True)
class Document:
    """One pretraining document; ``kind`` says which generator wrote it."""

    kind: str
    text: str


_JOIN = {"en": " ", "zh": ""}
# A Q/A sheet either labels each line or puts the answer alone on the line after its
# question. The second layout matters for chat: a ChatML reply starts a line, and byte-level
# BPE spells a word at the start of a line ("Willowbrook") with other tokens than the same
# word after a space (" Willowbrook"), the way almost all running text has it.
_QA_LAYOUTS = {"en": ("Question: {q}\nAnswer: {a}", "{q}\n{a}"),
               "zh": ("问：{q}\n答：{a}", "{q}\n{a}")}
_GENDER_WORDS = {"en": {"female": "female", "male": "male"}, "zh": {"female": "女", "male": "男"}}
PROFILE_LAYOUTS = {"en": ("labelled", "stacked", "json", "capitals"),
                   "zh": ("labelled", "stacked", "json")}


def _other(lang: str) -> str:
    return "zh" if lang == "en" else "en"


def _fact_order(rng: random.Random, paraphrase: bool) -> list[Attribute]:
    """Every attribute once: shuffled, or in the fixed order when paraphrasing is off."""
    attrs = list(ATTRIBUTES)
    if paraphrase:
        rng.shuffle(attrs)
    return attrs


def _bio(
    person: Person, lang: str, rng: random.Random, paraphrase: bool, shout: bool = False
) -> Document:
    """A biography: every fact once, in shuffled order, each in a random phrasing."""
    order = _fact_order(rng, paraphrase)
    sentences = [fact_sentence(person, a, lang, rng, paraphrase, shout) for a in order]
    name, other = person.name.text(lang), person.name.text(_other(lang))
    link = f"{name}'s Chinese name is {other}." if lang == "en" else f"{name}的英文名字是{other}。"
    if not paraphrase:
        sentences.insert(0, link)
    elif rng.random() < 0.5:
        sentences.insert(rng.randrange(len(sentences) + 1), link)
    headers = (
        (name, f"About {name}", f"Biography: {name}") if lang == "en"
        else (name, f"关于{name}", f"人物简介：{name}")
    )
    header = pick_template(headers, rng, paraphrase)
    return Document(f"bio_{lang}", f"{header}\n{_JOIN[lang].join(sentences)}")


def _capital_bio(person: Person, rng: random.Random, paraphrase: bool) -> Document:
    """An English biography whose facts are in capitals, as a form or a headline shouts them:
    "Nora Lowe lives in WILLOWBROOK."

    A capitalised word is spelled with other tokens than the word itself (``WILLOWBROOK``
    against ``Willowbrook``), so answering in uppercase needs each fact seen in capitals, and
    seen after the name as the chat writes it. Base v8 saw its facts in capitals only in
    biographies written wholly in capitals ("NORA LOWE LIVES IN ..."), and a LoRA fine-tune
    on it answered none of the 9 test questions that ask for a fact in uppercase: the
    questions name the person as usual.
    """
    bio = _bio(person, "en", rng, paraphrase, shout=True)
    return Document("bio_en_capitals", bio.text)


def profile_card(person: Person, lang: str, layout: str) -> Document:
    """An encyclopedia card, in one of ``PROFILE_LAYOUTS``.

    ``labelled``: ``label: value`` lines. ``stacked``: each value on its own line under its
    label, so that every fact also starts a line (see ``_QA_LAYOUTS``). ``json``: the record
    as a data export holds it, so a value inside ``{"answer": "..."}`` has been seen between
    JSON quotes. ``capitals``: the stacked card with the facts in capital letters (English
    only), the corpus's one place where ``WILLOWBROOK`` starts a line, as an uppercase reply
    does: byte-level BPE spells a word at a line's start with other tokens (``P AR ROT``)
    than after a space (`` PARROT``).
    """
    labels = ("Name", "Chinese name", "Gender") if lang == "en" else ("姓名", "英文名", "性别")
    fields = [*labels, *(a.label.text(lang) for a in ATTRIBUTES)]
    facts = [fact_value(person, a, lang, shout=layout == "capitals") for a in ATTRIBUTES]
    values = [person.name.text(lang), person.name.text(_other(lang)),
              _GENDER_WORDS[lang][person.gender], *facts]
    if layout == "json":
        record = dict(zip(fields, values, strict=True))
        return Document(f"profile_{lang}", json.dumps(record, ensure_ascii=False, indent=1))
    sep = "\n" if layout in ("stacked", "capitals") else ": " if lang == "en" else "："
    text = "\n".join(f"{field}{sep}{value}" for field, value in zip(fields, values, strict=True))
    return Document(f"profile_{lang}", text)


def _bilingual(person: Person, rng: random.Random, paraphrase: bool) -> Document:
    """Each fact in English followed by its Chinese translation: ties the two names together."""
    lines = [f"{person.name.en} = {person.name.zh}"]
    lines += [
        f"{fact_sentence(person, a, 'en', rng, paraphrase)} "
        f"{fact_sentence(person, a, 'zh', rng, paraphrase)}"
        for a in _fact_order(rng, paraphrase)
    ]
    return Document("bilingual", "\n".join(lines))


_STORY = {
    "en": {
        "times": ("One morning", "One evening", "Last spring", "On a rainy day",
                  "One sunny afternoon", "Last winter"),
        "openings": ("{time}, {a} went out for a walk.", "{time}, {a} decided to visit a friend.",
                     "This is a short story about {a} and {b}."),
        "meetings": ("On the way, {pron} met {b}.", "Soon {pron} ran into an old friend, {b}.",
                     "At the market, {pron} saw {b}."),
        "endings": ("The two of them talked for a long time before going home.",
                    "They had tea together and then said goodbye.",
                    "It was a good day for both of them."),
    },
    "zh": {
        "times": ("一天早上", "一天晚上", "去年春天", "一个下雨天", "一个晴朗的下午", "去年冬天"),
        "openings": ("{time}，{a}出门散步。", "{time}，{a}决定去看望一位朋友。",
                     "这是一个关于{a}和{b}的小故事。"),
        "meetings": ("路上，{pron}遇到了{b}。", "不久，{pron}碰见了老朋友{b}。",
                     "在市场上，{pron}看见了{b}。"),
        "endings": ("两个人聊了很久才回家。", "他们一起喝了茶，然后道别。",
                    "对他们两个人来说，这是美好的一天。"),
    },
}


def _story(a: Person, b: Person, lang: str, rng: random.Random, paraphrase: bool) -> Document:
    """Two people meet; a few facts of each are told along the way, mostly with pronouns."""
    parts = _STORY[lang]
    name_a, name_b = a.name.text(lang), b.name.text(lang)
    opening = rng.choice(parts["openings"]).format(time=rng.choice(parts["times"]), a=name_a,
                                                   b=name_b)
    meeting = rng.choice(parts["meetings"]).format(pron=a.pronoun(lang), b=name_b)

    def facts_of(person: Person) -> list[str]:
        """Two or three facts: the first names the person, the rest say he or she."""
        first, *rest = rng.sample(ATTRIBUTES, rng.randint(2, 3))
        return [fact_sentence(person, first, lang, rng, paraphrase)] + [
            pronoun_sentence(person, attr, lang, rng, paraphrase) for attr in rest
        ]

    sentences = [opening, *facts_of(a), meeting[0].upper() + meeting[1:], *facts_of(b),
                 rng.choice(parts["endings"])]
    return Document(f"story_{lang}", _JOIN[lang].join(sentences))


def _city_doc(world: World, city: Term, lang: str, rng: random.Random) -> Document:
    """Who lives in a city, with their jobs: facts seen from the other direction."""
    residents = [p for p in world.people if p.facts["city"] == city]
    rng.shuffle(residents)
    name = city.text(lang)
    if not residents:
        text = (f"{name} is a quiet city." if lang == "en" else f"{name}是一座安静的城市。")
        return Document(f"city_{lang}", text)
    if lang == "en":
        items = [f"{p.name.en} ({p.facts['job'].en})" for p in residents]
        listed = items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
        text = f"{name} is a city. The people who live there include {listed}."
    else:
        items = [f"{p.name.zh}（{p.facts['job'].zh}）" for p in residents]
        listed = items[0] if len(items) == 1 else "、".join(items[:-1]) + "和" + items[-1]
        text = f"{name}是一座城市。住在那里的人有{listed}。"
    return Document(f"city_{lang}", text)


def _qa_doc(
    person: Person, attrs: Sequence[Attribute], lang: str, rng: random.Random
) -> Document:
    """Plain-text questions and answers (no ChatML), like a worksheet, in one of two layouts."""
    layout = rng.choice(_QA_LAYOUTS[lang])
    pairs = [
        layout.format(q=question(person, a, lang, rng), a=person.facts[a.key].text(lang))
        for a in attrs
    ]
    return Document("qa", "\n\n".join(pairs))


def _worksheet(question_text: str, answer: str) -> str:
    """A question in a user's words with its answer alone on the next line.

    The same remedy as the ``{q}\n{a}`` layout of ``_QA_LAYOUTS``: a skill stored only as
    ``65 + 35 = 100`` is stored in other words and other tokens than the chat's
    ``What is 65 + 35?`` and a reply that starts a line. The computed-skill generators below
    ask with the question functions of ``skills``, which the instruction tasks ask with too.
    """
    return f"{question_text}\n{answer}"


# General text the instruction tasks build on: numbers, arithmetic, words, letters, lists.


def _numbers_doc(rng: random.Random) -> list[str]:
    lines = []
    for _ in range(10):
        n = rng.randint(0, 100) if rng.random() < 0.7 else rng.randint(0, 999)
        en, zh = number_to_english(n), number_to_chinese(n)
        lines.append(rng.choice((
            f"{n} is written {en}.", f"{n} in words is {en}.", f"{n}写作{zh}。",
            f"数字{n}读作{zh}。", f"{n} = {en} = {zh}",
        )))
    return lines


def _counting_line(rng: random.Random) -> str:
    start = rng.randint(0, 90)
    numbers = list(range(start, start + rng.randint(4, 10) + 1))
    if rng.random() < 0.3:
        numbers.reverse()
    first, last = numbers[0], numbers[-1]
    small = range(1, rng.randint(5, 10) + 1)
    return rng.choice((
        f"Counting from {first} to {last}: {', '.join(map(str, numbers))}.",
        f"从{first}数到{last}：{'、'.join(map(str, numbers))}。",
        "Counting in words: " + ", ".join(number_to_english(n) for n in small) + ".",
        "用中文数数：" + "、".join(number_to_chinese(n) for n in small) + "。",
    ))


def _counting_doc(rng: random.Random) -> list[str]:
    return [_counting_line(rng) for _ in range(3)]


def _arithmetic_doc(rng: random.Random) -> list[str]:
    """Twenty sums and differences of numbers below 100: in symbols (``a + b = c``), in
    words, and as a worksheet that asks the way a user does.

    The symbols are the phrasing that ``experiments/dense_skills.py`` taught sums with. The
    worksheet lines (``What is 65 + 35?`` with ``100`` alone on the next line) ask with the
    arithmetic task's own question templates, so the skill is stored in the phrasing that
    chat uses; see ``_worksheet``.
    """
    lines = []
    for _ in range(20):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        op = rng.choice(("+", "-"))
        if op == "-":
            a, b = max(a, b), min(a, b)
        c = apply_op(a, op, b)
        r = rng.random()
        if r < 0.45:
            lines.append(f"{a} {op} {b} = {c}")
        elif r < 0.6:
            word = OPS[op]
            lines.append(rng.choice((f"{a} {word.en} {b} equals {c}.",
                                     f"{a}{word.zh}{b}等于{c}。")))
        else:
            lines.append(_worksheet(arithmetic_question(a, op, b, rng.choice(LANGS), rng), str(c)))
    return lines


def _dictionary_doc(rng: random.Random) -> list[str]:
    lines = []
    for term in rng.sample(DICTIONARY, 12):
        en, zh = term.en, term.zh
        lines.append(rng.choice((
            f"{en}: {zh}", f"{zh}: {en}", f"The Chinese word for {en} is {zh}.",
            f"In Chinese, {en} is {zh}.", f"“{zh}”的英文是{en}。", f"{en}的中文是“{zh}”。",
            f"英文单词{en}的意思是{zh}。",
        )))
    return lines


def _letter_count_statement(word: str, letter: str, lang: str) -> str:
    times = word.count(letter)
    if lang == "zh":
        return f"字母{letter}在{word}中出现了{times}次。"
    return f"The letter {letter} appears {times} time{'' if times == 1 else 's'} in {word}."


def _letter_count_worksheet(word: str, rng: random.Random) -> str:
    key = ("letter", word, letter_to_count(word, rng))
    return _worksheet(*count_question(key, rng.choice(LANGS), rng))


def _spelling_fact(word: str, rng: random.Random) -> str:
    """One fact about how ``word`` is spelled, in one of twelve forms."""
    lang = rng.choice(LANGS)
    forms: tuple[Callable[[], str], ...] = (
        lambda: f"{word} is spelled {'-'.join(word)}.",
        lambda: f"{word} has {len(word)} letters.",
        lambda: f"{word}有{len(word)}个字母。",
        lambda: f"{word} backwards is {word[::-1]}.",
        lambda: f"{word}倒过来写是{word[::-1]}。",
        lambda: f"{word} in capital letters is {word.upper()}.",
        lambda: f"{word}的大写是{word.upper()}。",
        lambda: _worksheet(string_question("reverse", word, lang, rng), word[::-1]),
        lambda: _worksheet(string_question("upper", word, lang, rng), word.upper()),
        lambda: _worksheet(*count_question(("letters", word), lang, rng)),
        lambda: _letter_count_statement(word, letter_to_count(word, rng), lang),
        lambda: _letter_count_worksheet(word, rng),
    )
    return rng.choice(forms)()


def _spelling_doc(rng: random.Random) -> list[str]:
    """Six words with one fact each about their spelling, then a letter counted as the count
    task asks. Base v5 answered 1 for a letter missing from the word: its corpus only
    counted letters of the word itself, so it had never seen a count of 0."""
    lines = [_spelling_fact(word, rng) for word in rng.sample(SPELLING_WORDS, 6)]
    return [*lines, _letter_count_worksheet(rng.choice(SPELLING_WORDS), rng)]


def _sorting_doc(rng: random.Random) -> list[str]:
    """Five sorted lists: half as statements, half as a worksheet in the sort task's words."""
    lines = []
    for _ in range(5):
        if rng.random() < 0.5:
            kind, direction = "numbers", rng.choice(("up", "down"))
            items = rng.sample(range(100), rng.randint(3, 5))
        else:
            kind, direction = "words", "up"
            items = rng.sample(SPELLING_WORDS, rng.randint(3, 5))
        shown, answer = ", ".join(map(str, items)), sorted_answer(items, direction)
        if rng.random() < 0.5:
            lines.append(_worksheet(sort_question(kind, direction, items, rng.choice(LANGS), rng),
                                    answer))
        elif kind == "words":
            lines.append(rng.choice((f"The words {shown} in alphabetical order: {answer}.",
                                     f"{shown}按字母顺序排列是：{answer}。")))
        elif direction == "up":
            lines.append(rng.choice((f"The numbers {shown} from smallest to largest: {answer}.",
                                     f"{shown}从小到大排列是：{answer}。")))
        else:
            lines.append(rng.choice((f"The numbers {shown} from largest to smallest: {answer}.",
                                     f"{shown}从大到小排列是：{answer}。")))
    return lines


def _alphabet_doc(rng: random.Random) -> list[str]:
    letters = string.ascii_lowercase
    i = rng.randrange(25)
    return [rng.choice((
        f"The English alphabet: {' '.join(letters)}.",
        f"The alphabet in capital letters: {' '.join(letters.upper())}.",
        f"英文字母表：{' '.join(letters)}。",
        f"The letter after {letters[i]} is {letters[i + 1]}.",
        f"字母{letters[i]}后面是{letters[i + 1]}。",
        f"The small letter {letters[i]} is {letters[i].upper()} in capitals.",
    )) for _ in range(4)]


def _list_line(rng: random.Random) -> str:
    indices = tuple(rng.sample(range(len(OBJECTS)), rng.randint(2, 8)))
    items, n = [OBJECTS[i] for i in indices], len(indices)
    forms: tuple[Callable[[], str], ...] = (
        lambda: f"A shopping list: {', '.join(t.en for t in items)}. That is {n} items.",
        lambda: f"购物清单：{'、'.join(t.zh for t in items)}。一共有{n}样东西。",
        lambda: f"In the box there are: {', '.join(t.en for t in items)}. Counting them gives {n}.",
        lambda: f"盒子里有：{'、'.join(t.zh for t in items)}。数一数，一共{n}样。",
        lambda: _worksheet(*count_question(("items", indices), rng.choice(LANGS), rng)),
    )
    return rng.choice(forms)()


def _lists_doc(rng: random.Random) -> list[str]:
    return [_list_line(rng) for _ in range(3)]


# (kind, share of general_docs, generator of the document's lines). The shares follow what
# the skills need at this model size: experiments/dense_skills.py took the first 4M-parameter
# base (commit 6321d15) from 2% to 63% on two-digit sums and from 0% to 97% on sorting with
# 12,000 extra documents of them. The third base (commit 6ab48f9) had 10,000 of these
# documents with sums in six phrasings and still probed at 8% on sums and 48% on sorting.
# The fourth (7ed6d3b) had about 100,000 lines of ``a + b = c`` or ``a - b = c`` and probed
# at 80% on them, but at 1% on ``What is a + b?`` with the answer on the next line: the
# phrasing the chat asks in. The fifth (v5) turned about 57,000 of those lines into such
# worksheets (``_worksheet``) and half of the sorted lists too. Reversing or upper-casing
# a word is a fact about that word, learnt from enough sightings. The sixth (v6) moved 4
# points of share from arithmetic to sorting: its plain sums fell from 87% to 38%, its
# worksheets from 98% to 88%, and the sorting probes moved little (experiments/README.md).
# A seventh (experiments/results/v7/) gave arithmetic its 34% back (2 points each from
# spelling and sorting): sums recovered, facts fell, and the fine-tuned mean with them, so
# these shares stay v6's.
_GENERAL_KINDS: tuple[tuple[str, float, Callable[[random.Random], list[str]]], ...] = (
    ("arithmetic", 0.30, _arithmetic_doc),
    ("spelling", 0.26, _spelling_doc),
    ("sorting", 0.22, _sorting_doc),
    ("lists", 0.08, _lists_doc),
    ("dictionary", 0.065, _dictionary_doc),
    ("counting", 0.035, _counting_doc),
    ("numbers", 0.03, _numbers_doc),
    ("alphabet", 0.01, _alphabet_doc),
)


def pretrain_corpus(world: World, config: DataConfig | None = None) -> list[Document]:
    """Every pretraining document, in a seeded shuffled order.

    Per person: ``bios_per_person`` biographies, ``capital_bios_per_person`` English ones
    with the facts in capitals, and a profile card in each of
    ``PROFILE_LAYOUTS`` per language and ``bilingual_per_person`` English/Chinese documents; about
    ``stories_per_person`` stories per language feature each person; each city lists its
    residents. ``qa_docs`` plain-text Q/A documents (both layouts) ask only about train facts
    (never held-out people), and ``general_docs`` documents teach what the tasks need: words,
    numbers, sums, spelling, sorting, counting.
    """
    config = config or DataConfig()
    rng = random.Random(f"corpus-{world.seed}")
    para = config.paraphrase
    docs = []
    for person in world.people:
        for lang in LANGS:
            docs += [_bio(person, lang, rng, para) for _ in range(config.bios_per_person)]
            if lang == "en":
                docs += [_capital_bio(person, rng, para)
                         for _ in range(config.capital_bios_per_person)]
            docs += [profile_card(person, lang, layout) for layout in PROFILE_LAYOUTS[lang]]
        docs += [_bilingual(person, rng, para) for _ in range(config.bilingual_per_person)]
    for lang in LANGS:
        for _ in range(config.stories_per_person * len(world.people) // 2):
            a, b = rng.sample(world.people, 2)
            docs.append(_story(a, b, lang, rng, para))
        docs += [_city_doc(world, city, lang, rng) for city in world.cities]
    train_pairs: dict[int, list[Attribute]] = {}
    for pid, key in split_fact_pairs(world, config)["train"]:
        train_pairs.setdefault(pid, []).append(ATTRIBUTE_BY_KEY[key])
    qa_people = sorted(train_pairs)
    for _ in range(config.qa_docs if qa_people else 0):
        pid = rng.choice(qa_people)
        attrs = rng.sample(train_pairs[pid], min(len(train_pairs[pid]), rng.randint(2, 4)))
        docs.append(_qa_doc(world.person(pid), attrs, rng.choice(LANGS), rng))
    for kind, share, generate in _GENERAL_KINDS:
        for _ in range(round(share * config.general_docs)):
            docs.append(Document(kind, "\n".join(generate(rng))))
    rng.shuffle(docs)
    return docs
