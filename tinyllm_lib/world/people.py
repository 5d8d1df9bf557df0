"""The people of the world: who they are, what is known about each, and how it is said.

A ``Person`` has a name in each language, a gender and one value per ``Attribute``: home
city, job, favourite colour, pet, favourite food, age and lucky number. Each attribute
brings its templates per language for stating the fact, asking it, and asking it again in
a follow-up question; ``facts`` fills them in.

``make_world`` draws the cities and the people with their facts from one seed. A
``heldout_fraction`` of the people are *held out*: their facts are in the pretraining
corpus but in no instruction example. ``DataConfig`` holds the sizes of everything
generated, the corpus's and the instruction tasks' too.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .vocab import (
    CITY_PREFIXES,
    CITY_SUFFIXES,
    COLOURS,
    DICTIONARY,
    FAMILY_NAMES_EN,
    FEMALE_NAMES_EN,
    FOODS,
    GIVEN_FEMALE_ZH,
    GIVEN_FIRST_ZH,
    GIVEN_MALE_ZH,
    JOBS,
    MALE_NAMES_EN,
    PETS,
    SURNAMES_ZH,
    Term,
)

DEFAULT_SEED = 1234


# ---------------------------------------------------------------------------------------------
# Attributes: what the world knows about each person, and the ways to say and ask it.
#
# Template fields: {name}, {value}, {a_value} (English value with "a"/"an"), {value_words}
# (a number written out). Follow-up questions also get {pron} (he/she, 他/她) and {poss}
# (his/her). The first statement template of each attribute starts with {name}: it is the
# one used when paraphrasing is switched off, and stories reuse the templates that start
# with {name} by putting a pronoun there.


@dataclass(frozen=True)
class Attribute:
    """One kind of fact about a person, with its templates per language."""

    key: str
    label: Term
    statements: dict[str, tuple[str, ...]]
    questions: dict[str, tuple[str, ...]]
    follow_ups: dict[str, tuple[str, ...]]

    @property
    def is_number(self) -> bool:
        return self.key in ("age", "lucky_number")


ATTRIBUTES = (
    Attribute(
        "city", Term("Home city", "居住城市"),
        statements={
            "en": (
                "{name} lives in {value}.", "{name}'s home city is {value}.",
                "{value} is the city where {name} lives.",
                "{name} has made a home in the city of {value}.",
                "The home of {name} is in {value}.",
                "In {value} you can find {name}, who lives there.",
            ),
            "zh": (
                "{name}住在{value}。", "{name}的家在{value}。", "{value}是{name}居住的城市。",
                "{name}在{value}安了家。", "如果你去{value}，可以见到住在那里的{name}。",
            ),
        },
        questions={
            "en": (
                "Where does {name} live?", "Which city does {name} live in?",
                "What is {name}'s home city?",
            ),
            "zh": ("{name}住在哪里？", "{name}住在哪个城市？", "{name}的家在哪个城市？"),
        },
        follow_ups={"en": ("And where does {pron} live?",), "zh": ("那{pron}住在哪里？",)},
    ),
    Attribute(
        "job", Term("Job", "职业"),
        statements={
            "en": (
                "{name} works as {a_value}.", "{name} is {a_value} by profession.",
                "By trade, {name} is {a_value}.", "{name} earns a living as {a_value}.",
                "Every day {name} goes to work as {a_value}.", "{name} has a job as {a_value}.",
            ),
            "zh": (
                "{name}是一名{value}。", "{name}的职业是{value}。", "{name}靠做{value}谋生。",
                "{name}每天都去做{value}的工作。", "{name}的工作是当{value}。",
            ),
        },
        questions={
            "en": (
                "What is {name}'s job?", "What does {name} do for a living?",
                "What does {name} work as?",
            ),
            "zh": ("{name}的职业是什么？", "{name}是做什么工作的？", "{name}做什么工作？"),
        },
        follow_ups={
            "en": ("And what does {pron} do for a living?",), "zh": ("那{pron}是做什么工作的？",),
        },
    ),
    Attribute(
        "colour", Term("Favourite colour", "最喜欢的颜色"),
        statements={
            "en": (
                "{name}'s favourite colour is {value}.",
                "The colour {name} likes best is {value}.",
                "{name} loves the colour {value} more than any other.",
                "Of all colours, {name} prefers {value}.", "{value} is {name}'s favourite colour.",
            ),
            "zh": (
                "{name}最喜欢的颜色是{value}。", "{name}最喜欢{value}。",
                "在所有颜色中，{name}最爱{value}。", "{value}是{name}最喜欢的颜色。",
                "说到颜色，{name}最喜欢的是{value}。",
            ),
        },
        questions={
            "en": (
                "What is {name}'s favourite colour?", "Which colour does {name} like best?",
                "What colour does {name} like most?",
            ),
            "zh": ("{name}最喜欢什么颜色？", "{name}最喜欢的颜色是什么？"),
        },
        follow_ups={
            "en": ("And what is {poss} favourite colour?",), "zh": ("那{pron}最喜欢什么颜色？",),
        },
    ),
    Attribute(
        "pet", Term("Pet", "宠物"),
        statements={
            "en": (
                "{name} has a pet {value}.", "{name} keeps {a_value} as a pet.",
                "{name}'s pet is {a_value}.", "At home, {name} looks after a pet {value}.",
                "The pet that {name} owns is {a_value}.",
            ),
            "zh": (
                "{name}的宠物是{value}。", "{name}养的宠物是{value}。", "{value}是{name}的宠物。",
                "{name}家里养着宠物{value}。", "{name}有一个宠物，是{value}。",
            ),
        },
        questions={
            "en": (
                "What pet does {name} have?", "What is {name}'s pet?",
                "What animal does {name} keep as a pet?",
            ),
            "zh": ("{name}养了什么宠物？", "{name}的宠物是什么？"),
        },
        follow_ups={
            "en": ("And what pet does {pron} have?",), "zh": ("那{pron}养了什么宠物？",),
        },
    ),
    Attribute(
        "food", Term("Favourite food", "最喜欢的食物"),
        statements={
            "en": (
                "{name}'s favourite food is {value}.",
                "{name} likes to eat {value} more than anything else.",
                "The food {name} loves most is {value}.",
                "Given a choice, {name} always eats {value}.",
                "{value} is {name}'s favourite food.",
            ),
            "zh": (
                "{name}最喜欢的食物是{value}。", "{name}最爱吃{value}。",
                "{value}是{name}最喜欢吃的东西。", "如果可以选择，{name}总是吃{value}。",
                "说到食物，{name}最喜欢{value}。",
            ),
        },
        questions={
            "en": ("What is {name}'s favourite food?", "What does {name} like to eat most?"),
            "zh": ("{name}最喜欢吃什么？", "{name}最喜欢的食物是什么？"),
        },
        follow_ups={
            "en": ("And what is {poss} favourite food?",), "zh": ("那{pron}最喜欢吃什么？",),
        },
    ),
    Attribute(
        "age", Term("Age", "年龄"),
        statements={
            "en": (
                "{name} is {value} years old.", "{name}'s age is {value}.",
                "{name} turned {value} this year.", "{name} is {value_words} years old.",
                "The age of {name} is {value}.",
            ),
            "zh": (
                "{name}今年{value}岁。", "{name}的年龄是{value}岁。", "{name}已经{value}岁了。",
                "{name}今年{value_words}岁。", "{name}今年满{value}岁。",
            ),
        },
        questions={
            "en": ("How old is {name}?", "What is {name}'s age?"),
            "zh": ("{name}今年多大？", "{name}几岁了？", "{name}多少岁？"),
        },
        follow_ups={"en": ("And how old is {pron}?",), "zh": ("那{pron}几岁了？",)},
    ),
    Attribute(
        "lucky_number", Term("Lucky number", "幸运数字"),
        statements={
            "en": (
                "{name}'s lucky number is {value}.", "The lucky number of {name} is {value}.",
                "{name} thinks {value} brings good luck.", "{value} is {name}'s lucky number.",
                "For {name}, the number {value} is lucky.",
            ),
            "zh": (
                "{name}的幸运数字是{value}。", "{value}是{name}的幸运数字。",
                "{name}认为{value}会带来好运。", "对{name}来说，{value}是幸运数字。",
                "{name}最喜欢的幸运数字是{value}。",
            ),
        },
        questions={
            "en": ("What is {name}'s lucky number?", "Which number is lucky for {name}?"),
            "zh": ("{name}的幸运数字是什么？", "{name}的幸运数字是几？"),
        },
        follow_ups={
            "en": ("And what is {poss} lucky number?",), "zh": ("那{pron}的幸运数字是什么？",),
        },
    ),
)
ATTRIBUTE_BY_KEY = {a.key: a for a in ATTRIBUTES}


# ---------------------------------------------------------------------------------------------
# The world.


@dataclass(frozen=True)
class Person:
    """One inhabitant: a name in each language and one value per attribute.

    ``heldout`` people's facts are in the pretraining corpus but never in instruction data.
    """

    id: int
    name: Term
    gender: str  # "female" or "male"
    facts: dict[str, Term]
    heldout: bool

    def pronoun(self, lang: str) -> str:
        if lang == "zh":
            return "她" if self.gender == "female" else "他"
        return "she" if self.gender == "female" else "he"

    def possessive(self, lang: str) -> str:
        if lang == "zh":
            return "她的" if self.gender == "female" else "他的"
        return "her" if self.gender == "female" else "his"


@dataclass
class World:
    seed: int
    cities: list[Term]
    people: list[Person]
    dictionary: tuple[Term, ...] = DICTIONARY

    def person(self, person_id: int) -> Person:
        return self.people[person_id]


@dataclass
class DataConfig:
    """Sizes of everything generated. Counts of corpus documents are per language, except
    ``capital_bios_per_person`` (English only).

    ``paraphrase=False`` states every fact with one fixed template in a fixed order: the
    no-augmentation baseline of the Physics-of-LMs experiment, for comparison.
    """

    num_people: int = 200
    num_cities: int = 24
    heldout_fraction: float = 0.25
    bios_per_person: int = 12
    capital_bios_per_person: int = 5
    stories_per_person: int = 6
    bilingual_per_person: int = 3
    qa_docs: int = 1500
    general_docs: int = 21000
    paraphrase: bool = True
    train_per_task: int = 800
    train_facts: int = 1200
    val_per_task: int = 50
    test_per_task: int = 50

    def __post_init__(self) -> None:
        if not 0 <= self.heldout_fraction < 1:
            raise ValueError(
                f"DataConfig: heldout_fraction must be in [0, 1), got {self.heldout_fraction}"
            )
        for name in ("num_people", "num_cities"):
            if getattr(self, name) < 2:
                raise ValueError(f"DataConfig: {name} must be >= 2, got {getattr(self, name)}")
        max_cities = len(CITY_PREFIXES) * len(CITY_SUFFIXES)
        if self.num_cities > max_cities:
            raise ValueError(f"DataConfig: num_cities must be <= {max_cities}")


def _english_names(rng: random.Random, genders: Sequence[str]) -> list[str]:
    """One English name per gender in ``genders``: a first name of its own, a shared surname."""
    pools = {"female": rng.sample(FEMALE_NAMES_EN, len(FEMALE_NAMES_EN)),
             "male": rng.sample(MALE_NAMES_EN, len(MALE_NAMES_EN))}
    for gender, pool in pools.items():
        if genders.count(gender) > len(pool):
            raise ValueError(f"make_world: {genders.count(gender)} {gender} people but only "
                             f"{len(pool)} {gender} English first names")
    return [f"{pools[gender].pop()} {rng.choice(FAMILY_NAMES_EN)}" for gender in genders]


def _chinese_names(rng: random.Random, genders: Sequence[str]) -> list[str]:
    """One Chinese name per gender in ``genders``: surname, a first given character nobody else
    has, and a gendered second character."""
    if len(genders) > len(GIVEN_FIRST_ZH):
        raise ValueError(f"make_world: {len(genders)} people but only {len(GIVEN_FIRST_ZH)} "
                         "distinct first given characters")
    firsts = rng.sample(GIVEN_FIRST_ZH, len(genders))
    return [
        rng.choice(SURNAMES_ZH) + first
        + rng.choice(GIVEN_FEMALE_ZH if gender == "female" else GIVEN_MALE_ZH)
        for first, gender in zip(firsts, genders, strict=True)
    ]


def make_world(seed: int = DEFAULT_SEED, config: DataConfig | None = None) -> World:
    """The world of ``seed``: cities, then people with their facts and held-out flags."""
    config = config or DataConfig()
    rng = random.Random(f"world-{seed}")
    city_parts = [(p, s) for p in CITY_PREFIXES for s in CITY_SUFFIXES]
    cities = [
        Term(p.en + s.en, p.zh + s.zh) for p, s in rng.sample(city_parts, config.num_cities)
    ]
    genders = [rng.choice(("female", "male")) for _ in range(config.num_people)]
    names_en = _english_names(rng, genders)
    names_zh = _chinese_names(rng, genders)
    num_heldout = round(config.heldout_fraction * config.num_people)
    heldout = set(rng.sample(range(config.num_people), num_heldout))
    people = []
    for pid, gender in enumerate(genders):
        name = Term(names_en[pid], names_zh[pid])
        age = rng.randint(20, 79)
        lucky = rng.choice([n for n in range(1, 100) if n != age])
        facts = {
            "city": rng.choice(cities), "job": rng.choice(JOBS), "colour": rng.choice(COLOURS),
            "pet": rng.choice(PETS), "food": rng.choice(FOODS), "age": Term(str(age), str(age)),
            "lucky_number": Term(str(lucky), str(lucky)),
        }
        people.append(Person(pid, name, gender, facts, pid in heldout))
    return World(seed=seed, cities=cities, people=people)


def world_to_dict(world: World) -> dict[str, Any]:
    """The world as plain JSON-ready data (what ``world.json`` holds)."""
    return {
        "seed": world.seed,
        "attributes": [{"key": a.key, "en": a.label.en, "zh": a.label.zh} for a in ATTRIBUTES],
        "cities": [{"en": c.en, "zh": c.zh} for c in world.cities],
        "dictionary": [{"en": t.en, "zh": t.zh} for t in world.dictionary],
        "people": [
            {
                "id": p.id, "name_en": p.name.en, "name_zh": p.name.zh, "gender": p.gender,
                "heldout": p.heldout,
                "facts": {k: {"en": v.en, "zh": v.zh} for k, v in p.facts.items()},
            }
            for p in world.people
        ],
    }
