"""Stating facts: one fact of one person as a sentence or a question.

The templates of an ``Attribute`` (see ``people``) are filled in with a person's name and
value: ``fact_sentence`` states a fact in a randomly chosen phrasing (or the fixed first
one when paraphrasing is off), ``question`` asks it, and in running text a pronoun can
stand for the name. The corpus and the instruction tasks both write facts with these.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from .people import Attribute, Person
from .vocab import number_words


def _with_article(word: str) -> str:
    return ("an " if word[0].lower() in "aeiou" else "a ") + word


def fact_value(person: Person, attr: Attribute, lang: str, shout: bool = False) -> str:
    """One of ``person``'s facts as text; ``shout`` writes a word in capitals (``WILLOWBROOK``)."""
    value = person.facts[attr.key].text(lang)
    return value.upper() if shout and not attr.is_number else value


def render_template(
    template: str, person: Person, attr: Attribute, lang: str, name: str, shout: bool = False
) -> str:
    """``template`` filled in with ``person``'s fact (see ``fact_value`` for ``shout``)."""
    value = fact_value(person, attr, lang, shout)
    words = number_words(int(value), lang) if attr.is_number else value
    text = template.format(
        name=name, value=value, a_value=_with_article(value), value_words=words,
        pron=person.pronoun(lang), poss=person.possessive(lang),
    )
    return text[0].upper() + text[1:]


def pick_template(templates: Sequence[str], rng: random.Random, paraphrase: bool) -> str:
    return rng.choice(templates) if paraphrase else templates[0]


def fact_sentence(
    person: Person, attr: Attribute, lang: str, rng: random.Random, paraphrase: bool = True,
    shout: bool = False,
) -> str:
    """One statement of one fact, in a randomly chosen phrasing."""
    template = pick_template(attr.statements[lang], rng, paraphrase)
    return render_template(template, person, attr, lang, person.name.text(lang), shout)


def pronoun_sentence(
    person: Person, attr: Attribute, lang: str, rng: random.Random, paraphrase: bool
) -> str:
    """A statement whose subject is a pronoun ("She lives in ..."), for running text."""
    templates = [t for t in attr.statements[lang] if t.startswith("{name}")]
    template = pick_template(templates, rng, paraphrase)
    if lang == "zh":
        return render_template(template, person, attr, lang, person.pronoun(lang))
    if template.startswith("{name}'s "):
        return render_template(template.replace("{name}'s", "{name}", 1), person, attr, lang,
                       person.possessive(lang))
    return render_template(template, person, attr, lang, person.pronoun(lang))


def question(person: Person, attr: Attribute, lang: str, rng: random.Random) -> str:
    template = rng.choice(attr.questions[lang])
    return render_template(template, person, attr, lang, person.name.text(lang))
