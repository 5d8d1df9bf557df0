"""What the shipped base model can do before any instruction tuning, in plain text.

    python experiments/probe_base.py          # about 30 s on 2 CPU cores
    python experiments/probe_base.py --base DIR --json FILE   # another base model

Instruction tuning teaches a format; it can only draw out a skill the base already has.
This script asks the base for each instruction task's skill in the pretraining corpus's
own phrasing (``world/corpus.py``'s general documents), e.g. ``"65 + 35 ="`` for arithmetic, or
in a worksheet's (a question in the task's words, the answer on the next line), and scores
the greedy continuation by exact match. A prompt stops before the space that starts the
answer, because byte-level BPE joins a space to the word after it (" 100"). A family whose
skill the base lacks in plain text is one that LoRA on the base cannot be expected to
teach. Results go to ``experiments/results/probe_base.json``.
"""

from __future__ import annotations

import argparse
import json
import random
import string
from collections.abc import Callable
from pathlib import Path

from torch import nn

from tinyllm_lib.checkpoint import load_pretrained
from tinyllm_lib.config import BASE_DIR
from tinyllm_lib.sampling import generate
from tinyllm_lib.tokenizer import Tokenizer
from tinyllm_lib.world import (
    ATTRIBUTE_BY_KEY,
    DICTIONARY,
    SPELLING_WORDS,
    fact_sentence,
    make_world,
    profile_card,
    question,
)

RESULTS = Path(__file__).resolve().parent / "results"
PROBES_PER_SKILL = 100

Probe = tuple[str, str]  # (prompt, expected continuation)
ProbeMaker = Callable[[random.Random], Probe]
WORLD = make_world()  # the world data/ was generated from (the default seed)
HELDOUT_PEOPLE = [p for p in WORLD.people if p.heldout]


def arithmetic(rng: random.Random) -> Probe:
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    return f"{a} + {b} =", f" {a + b}"


def subtraction(rng: random.Random) -> Probe:
    a, b = sorted((rng.randint(0, 99), rng.randint(0, 99)), reverse=True)
    return f"{a} - {b} =", f" {a - b}"


def arithmetic_worksheet(rng: random.Random) -> Probe:
    """A sum asked the way the chat asks it, answered at the start of the next line."""
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    return f"What is {a} + {b}?\n", f"{a + b}"


def sort_numbers(rng: random.Random) -> Probe:
    numbers = rng.sample(range(100), rng.randint(3, 5))
    return (f"The numbers {', '.join(map(str, numbers))} from smallest to largest:",
            " " + ", ".join(map(str, sorted(numbers))))


def sort_worksheet(rng: random.Random) -> Probe:
    numbers = rng.sample(range(100), rng.randint(3, 5))
    return (f"Sort these numbers from smallest to largest: {', '.join(map(str, numbers))}\n",
            ", ".join(map(str, sorted(numbers))))


def uppercase(rng: random.Random) -> Probe:
    word = rng.choice(SPELLING_WORDS)
    return f"{word} in capital letters is", f" {word.upper()}"


def count_letter(rng: random.Random) -> Probe:
    word = rng.choice(SPELLING_WORDS)
    letter = rng.choice(word)
    return f"字母{letter}在{word}中出现了", f"{word.count(letter)}次"  # the word comes first here


def count_absent_letter(rng: random.Random) -> Probe:
    """A letter the word lacks, counted as the count task asks: the answer is 0."""
    word = rng.choice(SPELLING_WORDS)
    letter = rng.choice([c for c in string.ascii_lowercase if c not in word])
    return f'How many times does the letter "{letter}" appear in "{word}"?\n', "0"


def translate(rng: random.Random) -> Probe:
    term = rng.choice(DICTIONARY)
    return f"The Chinese word for {term.en} is", f" {term.zh}"


def pet_on_capitals_card(rng: random.Random) -> Probe:
    """A held-out person's pet on the capitals profile card, where each fact starts a line in
    capitals, as an uppercase reply starts (the card's home city, job and colour, already in
    capitals, come before it in the prompt)."""
    person = rng.choice(HELDOUT_PEOPLE)
    card = profile_card(person, "en", "capitals").text
    prompt = card[:card.index("\nPet\n") + len("\nPet\n")]
    return prompt, person.facts["pet"].en.upper()


def city_in_capitals_sentence(rng: random.Random) -> Probe:
    """A held-out person's home city as the capitals biographies state it, after the name
    written as usual ("Nora Lowe works as a BAKER. Nora Lowe lives in" WILLOWBROOK)."""
    person = rng.choice(HELDOUT_PEOPLE)
    job = fact_sentence(person, ATTRIBUTE_BY_KEY["job"], "en", rng, shout=True)
    return f"{job} {person.name.en} lives in", f" {person.facts['city'].en.upper()}"


def fact_worksheet(rng: random.Random, lang: str) -> Probe:
    """A held-out person's pet, job or food, asked as the chat asks, answered on the next line.

    The three attributes the lora-all fine-tune of base v5 drew out worst in English.
    """
    person = rng.choice(HELDOUT_PEOPLE)
    attr = ATTRIBUTE_BY_KEY[rng.choice(("pet", "job", "food"))]
    return f"{question(person, attr, lang, rng)}\n", person.facts[attr.key].text(lang)


def fact(rng: random.Random, heldout: bool, lang: str) -> Probe:
    person = rng.choice([p for p in WORLD.people if p.heldout == heldout])
    city = person.facts["city"]
    if lang == "zh":
        return f"{person.name.zh}住在", city.zh  # no spaces in Chinese text
    return f"{person.name.en} lives in", f" {city.en}"


SKILLS: dict[str, ProbeMaker] = {
    "arithmetic (a + b =)": arithmetic,
    "arithmetic (a - b =)": subtraction,
    "arithmetic worksheet (What is a + b?)": arithmetic_worksheet,
    "sort (smallest to largest)": sort_numbers,
    "sort worksheet (Sort these numbers ...)": sort_worksheet,
    "string (uppercase)": uppercase,
    "count (letter in a word; most answers are 1)": count_letter,
    "count worksheet (a letter not in the word: 0)": count_absent_letter,
    "translate (en -> zh)": translate,
    "facts: city, instruction-data people, en": lambda rng: fact(rng, False, "en"),
    "facts: city, instruction-data people, zh": lambda rng: fact(rng, False, "zh"),
    "facts: city, held-out people, en": lambda rng: fact(rng, True, "en"),
    "facts: city, held-out people, zh": lambda rng: fact(rng, True, "zh"),
    "facts: pet/job/food asked, held-out people, en": lambda rng: fact_worksheet(rng, "en"),
    "facts: pet/job/food asked, held-out people, zh": lambda rng: fact_worksheet(rng, "zh"),
    "facts: pet on the capitals card, held-out people": pet_on_capitals_card,
    "facts: city in capitals in a sentence, held-out people": city_in_capitals_sentence,
}


def skill_accuracy(model: nn.Module, tokenizer: Tokenizer, make: ProbeMaker) -> float:
    """Share of ``PROBES_PER_SKILL`` probes whose greedy continuation is the expected answer.

    The continuation must start with it and not go on with a letter or digit (" 10" is not
    the start of a right " 100"). The probes are drawn from a fixed seed, so every call asks
    the same questions.
    """
    rng = random.Random(0)
    correct = 0
    for _ in range(PROBES_PER_SKILL):
        prompt, expected = make(rng)
        budget = len(tokenizer.encode(expected)) + 2
        new = list(generate(model, tokenizer.encode(prompt), temperature=0,
                            max_new_tokens=budget))
        text = tokenizer.decode(new)
        correct += text.startswith(expected) and not text[len(expected):][:1].isalnum()
    return correct / PROBES_PER_SKILL


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, default=BASE_DIR, help="the base model's folder")
    parser.add_argument("--json", type=Path, default=RESULTS / "probe_base.json",
                        help="where the results go")
    args = parser.parse_args()
    model, tokenizer = load_pretrained(args.base)
    results: dict[str, float] = {}
    for name, make in SKILLS.items():
        results[name] = skill_accuracy(model, tokenizer, make)
        print(f"{name:56s} {results[name]:6.0%}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
