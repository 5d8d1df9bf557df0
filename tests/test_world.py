"""Tests of the synthetic world: determinism, splits, held-out facts and exact answers.

Answers are checked by an independent solver written here from the question text alone
(regexes and keyword tables), not by the generator's own templates or functions.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tinyllm_lib.data import load_conversations, load_task_names
from tinyllm_lib.evaluate import exact_match
from tinyllm_lib.tokenizer import Tokenizer
from tinyllm_lib.world import (
    DICTIONARY,
    TASKS,
    DataConfig,
    load_corpus,
    make_world,
    number_to_chinese,
    number_to_english,
    pretrain_corpus,
    write_dataset,
)

REPO_DATA = Path(__file__).resolve().parents[1] / "data"
FILES = (
    "world.json", "corpus.jsonl", "train.jsonl", "val.jsonl", "test.jsonl", "heldout_facts.jsonl",
    "train_alpaca.json", "train_sharegpt.json",
)
SMALL = DataConfig(
    num_people=30, num_cities=6, bios_per_person=2, stories_per_person=1, bilingual_per_person=1,
    qa_docs=10, general_docs=40, train_per_task=30, train_facts=40, val_per_task=5,
    test_per_task=5,
)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def default_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("default")
    write_dataset(out)
    return out


@pytest.fixture(scope="module")
def data(default_dir: Path) -> dict:
    splits = {name: read_jsonl(default_dir / f"{name}.jsonl")
              for name in ("train", "val", "test", "heldout_facts")}
    world = json.loads((default_dir / "world.json").read_text(encoding="utf-8"))
    corpus = read_jsonl(default_dir / "corpus.jsonl")
    return {"splits": splits, "world": world, "corpus": corpus}


# --- an independent solver -------------------------------------------------------------------

ATTR_KEYWORDS = {
    "en": [("for a living", "job"), ("lucky", "lucky_number"), ("old", "age"), ("age", "age"),
           ("live", "city"), ("home city", "city"), ("job", "job"), ("work", "job"),
           ("colour", "colour"), ("pet", "pet"), ("food", "food"), ("eat", "food")],
    "zh": [("幸运", "lucky_number"), ("岁", "age"), ("多大", "age"), ("住", "city"),
           ("城市", "city"), ("工作", "job"), ("职业", "job"), ("颜色", "colour"),
           ("宠物", "pet"), ("吃", "food"), ("食物", "food")],
}


def lang_of(text: str) -> str:
    return "zh" if any("\u4e00" <= ch <= "\u9fff" for ch in text) else "en"


def attribute_of(text: str) -> str:
    for keyword, attr in ATTR_KEYWORDS[lang_of(text)]:
        if keyword in text:
            return attr
    raise AssertionError(f"no attribute keyword in {text!r}")


class Solver:
    def __init__(self, world: dict) -> None:
        self.people = world["people"]
        names = {}
        for person in self.people:
            names[person["name_en"]] = person
            names[person["name_zh"]] = person
        self.by_name = names
        self.name_re = re.compile("|".join(sorted(map(re.escape, names), key=len, reverse=True)))
        self.en2zh = {t["en"]: t["zh"] for t in world["dictionary"]}
        self.zh2en = {t["zh"]: t["en"] for t in world["dictionary"]}

    def person_in(self, text: str) -> dict | None:
        found = self.name_re.search(text)
        return self.by_name[found.group()] if found else None

    def fact(self, text: str) -> tuple[dict, str]:
        person = self.person_in(text)
        assert person is not None, text
        rest = text.replace(person["name_en"], "").replace(person["name_zh"], "")
        return person, attribute_of(rest)

    def answer_fact(self, text: str, lang: str | None = None) -> str:
        person, attr = self.fact(text)
        return person["facts"][attr][lang or lang_of(text)]

    @staticmethod
    def arithmetic(text: str) -> int | None:
        found = re.search(r"(\d+)\s*(\+|-|plus|minus|加|减)\s*(\d+)", text)
        if not found:
            return None
        a, op, b = int(found.group(1)), found.group(2), int(found.group(3))
        return a + b if op in ("+", "plus", "加") else a - b

    @staticmethod
    def quoted(text: str) -> list[str]:
        return re.findall(r'["“]([^"”]+)["”]', text)

    @staticmethod
    def string(text: str) -> str:
        (word,) = Solver.quoted(text)
        reverse = any(k in text for k in ("Reverse", "backwards", "倒过来"))
        return word[::-1] if reverse else word.upper()

    @staticmethod
    def listed(text: str) -> list[str]:
        tail = re.split(r"[:：]", text)[-1].strip().rstrip("?？.。")
        return re.split(r", |、", tail)

    @staticmethod
    def sort(text: str) -> str:
        items = Solver.listed(text)
        down = any(k in text for k in ("largest to smallest", "descending", "从大到小"))
        if all(item.isdigit() for item in items):
            return ", ".join(map(str, sorted(map(int, items), reverse=down)))
        return ", ".join(sorted(items, reverse=down))

    @staticmethod
    def count(text: str) -> str:
        quoted = Solver.quoted(text)
        if len(quoted) == 2:
            letter = next(q for q in quoted if len(q) == 1)
            word = next(q for q in quoted if q != letter)
            return str(word.count(letter))
        if len(quoted) == 1:
            return str(len(quoted[0]))
        return str(len(Solver.listed(text)))

    def translate(self, text: str) -> str:
        (word,) = self.quoted(text)
        return self.en2zh[word] if lang_of(word) == "en" else self.zh2en[word]

    def single(self, task: str, text: str) -> str:
        if task in ("facts", "heldout_facts"):
            return self.answer_fact(text)
        if task == "arithmetic":
            return str(self.arithmetic(text))
        return {"string": self.string, "sort": self.sort, "count": self.count,
                "translate": self.translate}[task](text)

    def system_format(self, system: str, text: str) -> str:
        style = ("upper" if "upper" in system or "大写" in system else
                 "json" if "JSON" in system else
                 "zh" if "Chinese" in system or "中文" in system else "en")
        if self.person_in(text):
            value = self.answer_fact(text, style if style in ("zh", "en") else None)
        elif self.arithmetic(text) is not None:
            value = str(self.arithmetic(text))
        else:
            value = self.translate(text)
        if style == "upper":
            return value.upper()
        if style == "json":
            return json.dumps({"answer": value}, ensure_ascii=False)
        return value

    def multi_turn(self, first: str, follow: str) -> tuple[str, str]:
        person = self.person_in(first)
        if person:
            return self.answer_fact(first), person["facts"][attribute_of(follow)][lang_of(follow)]
        total = self.arithmetic(first)
        if total is not None:
            c = int(re.search(r"\d+", follow).group())
            add = "add" in follow or "加" in follow
            return str(total), str(total + c if add else total - c)
        if any(k in first for k in ("Translate", "word for", "翻译", "的中文", "的英文")):
            return self.translate(first), self.translate(follow)
        reversed_word = self.string(first)
        return reversed_word, reversed_word.upper()

    def expected(self, example: dict) -> str:
        turns = [(m["role"], m["content"]) for m in example["messages"]]
        task = example["task"]
        if task == "system_format":
            (r0, system), (r1, text), _ = turns
            assert (r0, r1) == ("system", "user")
            return self.system_format(system, text)
        if task == "multi_turn":
            (_, first), (_, reply), (_, follow), _ = turns
            want_first, want = self.multi_turn(first, follow)
            assert reply == want_first, (turns, want_first)
            return want
        (_, text), _ = turns
        return self.single(task, text)


# --- tests ---------------------------------------------------------------------------------


def test_number_words_match_hand_written_values() -> None:
    english = {0: "zero", 7: "seven", 13: "thirteen", 20: "twenty", 42: "forty-two",
               99: "ninety-nine", 100: "one hundred", 115: "one hundred and fifteen",
               999: "nine hundred and ninety-nine"}
    chinese = {0: "零", 7: "七", 10: "十", 11: "十一", 20: "二十", 42: "四十二", 100: "一百",
               105: "一百零五", 110: "一百一十", 999: "九百九十九"}
    assert {n: number_to_english(n) for n in english} == english
    assert {n: number_to_chinese(n) for n in chinese} == chinese
    with pytest.raises(ValueError, match="1000"):
        number_to_english(1000)


def test_dictionary_and_names_are_unambiguous() -> None:
    for lang in ("en", "zh"):
        words = [getattr(t, lang) for t in DICTIONARY]
        assert len(set(words)) == len(words), lang
    world = make_world()
    names = [p.name.en for p in world.people] + [p.name.zh for p in world.people]
    assert len(set(names)) == len(names) == 400
    # No name inside another, so "name in text" finds exactly that person.
    joined = "\n".join(names)
    assert all(joined.count(name) == 1 for name in names)
    # Every English first name belongs to one person (one distinctive token to tie facts to).
    first_names = [p.name.en.split()[0] for p in world.people]
    assert len(set(first_names)) == len(first_names)
    assert len({c.en for c in world.cities}) == len({c.zh for c in world.cities}) == 24
    assert sum(p.heldout for p in world.people) == 50


def test_same_seed_same_bytes_across_processes(tmp_path: Path) -> None:
    write_dataset(tmp_path / "a", seed=7, config=SMALL)
    code = (
        "import sys; from tinyllm_lib.world import write_dataset, DataConfig; "
        f"write_dataset(sys.argv[1], seed=7, config=DataConfig(**{SMALL.__dict__!r}))"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")  # set/dict order must not leak into files
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "b")], check=True, env=env)
    write_dataset(tmp_path / "c", seed=8, config=SMALL)
    for name in FILES:
        a = (tmp_path / "a" / name).read_bytes()
        assert a == (tmp_path / "b" / name).read_bytes(), name
        assert a != (tmp_path / "c" / name).read_bytes(), name
        assert b"\r" not in a and a.endswith(b"\n")


def test_committed_data_is_the_default_generation(default_dir: Path) -> None:
    for name in FILES:
        committed = REPO_DATA / name
        assert committed.exists(), f"{committed} missing: run `python -m tinyllm_lib data`"
        digest = hashlib.sha256(committed.read_bytes()).hexdigest()
        assert digest == hashlib.sha256((default_dir / name).read_bytes()).hexdigest(), name


def test_alpaca_and_sharegpt_files_hold_the_train_messages(default_dir: Path) -> None:
    """The exported files, read by the loaders ``train --data`` uses, are the native train
    split: every conversation as ShareGPT, every one but ``multi_turn``'s as Alpaca."""
    native = load_conversations(default_dir / "train.jsonl")
    tasks = load_task_names(default_dir / "train.jsonl")
    assert load_conversations(default_dir / "train_sharegpt.json") == native
    single = [m for m, task in zip(native, tasks, strict=True) if task != "multi_turn"]
    assert len(single) < len(native)
    assert load_conversations(default_dir / "train_alpaca.json") == single
    assert any(m[0]["role"] == "system" for m in single)  # the system field is exercised


def test_every_family_in_every_split_with_requested_counts(data: dict) -> None:
    config = DataConfig()
    splits = data["splits"]
    for split in ("train", "val", "test"):
        counts = {task: 0 for task in TASKS}
        for example in splits[split]:
            counts[example["task"]] += 1
        if split == "train":
            want = {t: config.train_per_task for t in TASKS} | {"facts": config.train_facts}
        else:
            want = {t: config.val_per_task for t in TASKS}
        assert counts == want, split
    people = data["world"]["people"]
    assert len(splits["heldout_facts"]) == sum(p["heldout"] for p in people) * 7 * 2
    assert {e["task"] for e in splits["heldout_facts"]} == {"heldout_facts"}


def test_answers_are_exact_and_are_the_last_reply(data: dict) -> None:
    solver = Solver(data["world"])
    for split, examples in data["splits"].items():
        for example in examples:
            roles = [m["role"] for m in example["messages"] if m["role"] != "system"]
            assert roles == ["user", "assistant"] * (len(roles) // 2), example
            assert example["answer"] == example["messages"][-1]["content"]
            assert example["answer"] == solver.expected(example), (split, example)
            assert example["answer"]


def test_every_answer_fits_the_exact_match_budget(data: dict) -> None:
    """``exact_match`` generates at most 32 new tokens by default; the reply's end marker
    needs one of them."""
    budget = inspect.signature(exact_match).parameters["max_new_tokens"].default
    tokenizer = Tokenizer.load(REPO_DATA / "base" / "tokenizer.json")
    longest = max((e["answer"] for examples in data["splits"].values() for e in examples),
                  key=lambda answer: len(tokenizer.encode(answer)))
    assert len(tokenizer.encode(longest)) < budget, longest


def test_no_conversation_in_two_splits(data: dict) -> None:
    keys = {
        split: [json.dumps(e["messages"], ensure_ascii=False, sort_keys=True) for e in examples]
        for split, examples in data["splits"].items()
    }
    for split, values in keys.items():
        assert len(set(values)) == len(values), split
    names = list(keys)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not set(keys[a]) & set(keys[b]), (a, b)


def test_heldout_people_are_in_no_instruction_data_nor_corpus_qa(data: dict) -> None:
    people = data["world"]["people"]
    heldout = [n for p in people if p["heldout"] for n in (p["name_en"], p["name_zh"])]
    others = [n for p in people if not p["heldout"] for n in (p["name_en"], p["name_zh"])]
    heldout_re = re.compile("|".join(map(re.escape, heldout)))
    for split in ("train", "val", "test"):
        text = "\n".join(m["content"] for e in data["splits"][split] for m in e["messages"])
        assert not heldout_re.search(text), split
        if split == "train":  # the same check does find the other people's names
            assert all(name in text for name in others)
    qa = "\n".join(d["text"] for d in data["corpus"] if d["kind"] == "qa")
    assert qa and not heldout_re.search(qa)
    held = "\n".join(e["messages"][0]["content"] for e in data["splits"]["heldout_facts"])
    assert all(name in held for name in heldout)


def test_facts_val_test_pairs_never_asked_in_train(data: dict) -> None:
    solver = Solver(data["world"])

    def pairs(split: str, tasks: tuple[str, ...]) -> set[tuple[int, str]]:
        found = set()
        for example in data["splits"][split]:
            if example["task"] not in tasks:
                continue
            users = [m["content"] for m in example["messages"] if m["role"] == "user"]
            person = solver.person_in(users[0])
            if person:
                found.add((person["id"], solver.fact(users[0])[1]))
                found |= {(person["id"], attribute_of(u)) for u in users[1:]}
        return found

    train = pairs("train", TASKS)  # facts, and the facts inside system_format and multi_turn
    assert len(train) > 500
    for split in ("val", "test"):
        held_out = pairs(split, ("facts",))
        assert len(held_out) == DataConfig().val_per_task and not held_out & train, split


def test_heldout_facts_stated_in_corpus_in_both_languages_and_many_ways(data: dict) -> None:
    sentences = [
        s for doc in data["corpus"] if doc["kind"] != "qa"
        for s in re.split(r"(?<=[.!?。！？])\s*|\n", doc["text"]) if s
    ]
    shapes: dict[tuple[str, str, str], set[str]] = {}
    heldout = [p for p in data["world"]["people"] if p["heldout"]]
    # Values match in any case: the capitals biographies state facts too ("Nora Lowe lives
    # in WILLOWBROOK"), and a phrasing counts once whatever its case (the shape is
    # lower-cased).
    by_name = {p[f"name_{lang}"].lower(): (p, lang) for p in heldout for lang in ("en", "zh")}
    name_re = re.compile("|".join(map(re.escape, by_name)), re.IGNORECASE)
    for sentence in sentences:
        for found in set(name_re.findall(sentence)):
            person, lang = by_name[found.lower()]
            name = person[f"name_{lang}"]
            for attr, value in person["facts"].items():
                word = re.escape(value[lang])
                pattern = re.compile(rf"(?i)(?<!\w){word}(?!\w)" if lang == "en" else word)
                if pattern.search(sentence.replace(found, "")):
                    # The sentence's shape: the phrasing with the person and value blanked out.
                    shape = pattern.sub("<V>", sentence.replace(found, "<N>")).lower()
                    shapes.setdefault((name, attr, lang), set()).add(shape)
    for person in heldout:
        for attr in person["facts"]:
            for lang in ("en", "zh"):
                found = shapes.get((person[f"name_{lang}"], attr, lang), set())
                assert len(found) >= 3, (person[f"name_{lang}"], attr, lang, found)


def test_paraphrase_off_states_each_person_one_fixed_way() -> None:
    def bios(paraphrase: bool) -> dict[str, set[str]]:
        config = DataConfig(**(SMALL.__dict__ | {"paraphrase": paraphrase}))
        world = make_world(3, config)
        texts: dict[str, set[str]] = {p.name.en: set() for p in world.people}
        for doc in pretrain_corpus(world, config):
            if doc.kind == "bio_en":
                for name, found in texts.items():
                    if name in doc.text:
                        found.add(doc.text)
        return texts

    assert all(len(v) == 1 for v in bios(False).values())
    assert all(len(v) == 2 for v in bios(True).values())


def test_load_corpus_and_config_errors_name_the_fault(tmp_path: Path) -> None:
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"kind": "x", "text": "hello"}\n{"kind": "x"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"corpus\.jsonl: line 2: .*'text'"):
        load_corpus(path)
    path.write_text('{"kind": "x", "text": "hello"}\n\n', encoding="utf-8")
    assert load_corpus(path) == ["hello"]
    with pytest.raises(ValueError, match="heldout_fraction"):
        DataConfig(heldout_fraction=1.5)
    with pytest.raises(ValueError, match="task 'facts'"):
        write_dataset(tmp_path / "big", config=DataConfig(**(SMALL.__dict__
                                                            | {"test_per_task": 200})))


def test_json_and_capitals_profile_cards_hold_every_fact(data: dict) -> None:
    """Each person has a JSON record per language whose values are their facts, and an
    English card with each fact in capitals at the start of a line, as an uppercase reply
    starts: the corpus's only source of facts in those two forms."""
    records = {}
    stacked = []
    for doc in data["corpus"]:
        if doc["kind"].startswith("profile_") and doc["text"].startswith("{"):
            record = json.loads(doc["text"])
            records[doc["kind"][-2:], next(iter(record.values()))] = set(record.values())
        elif doc["kind"] == "profile_en" and doc["text"].startswith("Name\n"):
            stacked.append(doc["text"])
    for person in data["world"]["people"]:
        for lang in ("en", "zh"):
            values = records[lang, person[f"name_{lang}"]]
            assert {v[lang] for v in person["facts"].values()} <= values, (person, lang)
        cards = [c for c in stacked if c.startswith(f"Name\n{person['name_en']}\n")]
        capitals = [c for c in cards if person["facts"]["pet"]["en"].upper() in c.split("\n")]
        assert len(cards) == 2 and len(capitals) == 1, cards
        for fact in person["facts"].values():
            assert f"\n{fact['en'].upper()}" in capitals[0], (fact, capitals[0])


def test_corpus_worksheets_are_answered_right(data: dict) -> None:
    """The computed-skill documents ask some of their questions in the tasks' words, with the
    answer alone on the next line; the independent solver agrees with every such answer."""
    bare_answer = re.compile(r"\d+|[A-Za-z]+|[0-9a-z]+(, [0-9a-z]+)+")
    checked = Counter()
    for doc in data["corpus"]:
        if doc["kind"] not in ("arithmetic", "sorting", "spelling", "lists"):
            continue
        lines = doc["text"].split("\n")
        for question_text, answer in zip(lines, lines[1:], strict=False):
            if not bare_answer.fullmatch(answer):
                continue
            if doc["kind"] == "arithmetic":
                want = str(Solver.arithmetic(question_text))
            elif ", " in answer:
                want = Solver.sort(question_text)
            elif answer.isdigit():
                want = Solver.count(question_text)
            else:
                want = Solver.string(question_text)
            assert answer == want, (doc["kind"], question_text, answer)
            checked[doc["kind"]] += 1
    docs = Counter(d["kind"] for d in data["corpus"])
    assert checked["arithmetic"] > 5 * docs["arithmetic"]  # about 8 of a document's 20 lines
    assert checked["sorting"] > docs["sorting"]  # about 2.5 of 5
    assert checked["spelling"] > docs["spelling"]  # about 1.8 of 6
    assert checked["lists"] > docs["lists"] / 2  # about 0.6 of 3


def test_corpus_letter_counts_are_right_and_include_zero(data: dict) -> None:
    """Every stated or worksheet count of one letter in a word is right, and some are 0: the
    count task asks about letters missing from the word too (base v5 answered 1 to them)."""
    statement = re.compile(r"The letter (\w) appears (\d+) times? in (\w+)\.|"
                           r"字母(\w)在(\w+)中出现了(\d+)次。")
    counts = Counter()
    for doc in data["corpus"]:
        if doc["kind"] != "spelling":
            continue
        lines = doc["text"].split("\n")
        for line, next_line in zip(lines, [*lines[1:], ""], strict=True):
            if match := statement.fullmatch(line):
                en_letter, en_times, en_word, zh_letter, zh_word, zh_times = match.groups()
                letter, word = en_letter or zh_letter, en_word or zh_word
                times = int(en_times or zh_times)
            elif ("letter" in line or "字母" in line) and next_line.isdigit() and (
                    "times" in line or "Count the letter" in line or "几次" in line
                    or "几个字母“" in line):
                times = int(next_line)
                letter, word = re.findall(r"[“\"]([a-z]+)[”\"]", line)
                if len(letter) > 1:  # “w”里有几个字母“c”: the word comes first
                    letter, word = word, letter
            else:
                continue
            assert word.count(letter) == times, (line, next_line)
            counts["zero" if times == 0 else "more"] += 1
    assert counts["more"] > 8_000  # 9,121 in the default corpus
    assert counts["zero"] > 1_500  # 1,845
