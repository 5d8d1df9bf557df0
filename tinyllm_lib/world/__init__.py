"""The project's synthetic bilingual world: people, places, things and numbers.

No dataset hub is reachable, so the project makes its own data. Everything comes from
seeded ``random.Random`` generators, so one seed always gives byte-for-byte the same files:
a pretraining corpus of English and Chinese documents, ChatML instruction conversations
split into train/val/test, and the ``heldout_facts`` questions about facts that only
pretraining stated.

One concept per module, each building only on those above it:

* ``vocab``: ``Term`` (a word in both languages), the word lists and the dictionary, the
  parts of names, and numbers written out in words.
* ``people``: the attributes of a person with the templates that state and ask them;
  ``Person``, ``World``, ``DataConfig`` (the sizes of everything) and ``make_world``.
* ``facts``: one fact of one person as a sentence or a question.
* ``splits``: the keys examples are about, and which go to train, val and test.
* ``skills``: how sums, spelling, sorting, counting and translation are asked and
  answered, in the corpus and the instruction tasks alike.
* ``corpus``: the pretraining documents.
* ``tasks``: the instruction task families and their examples.
* ``dataset``: writing every data file; reading the corpus back.
"""

from .corpus import PROFILE_LAYOUTS, Document, pretrain_corpus, profile_card
from .dataset import load_corpus, write_dataset
from .facts import fact_sentence, question
from .people import (
    ATTRIBUTE_BY_KEY,
    ATTRIBUTES,
    DEFAULT_SEED,
    Attribute,
    DataConfig,
    Person,
    World,
    make_world,
    world_to_dict,
)
from .splits import SPLITS, split_fact_pairs
from .tasks import HELDOUT_TASK, TASKS, Example, instruction_splits
from .vocab import (
    DICTIONARY,
    LANGS,
    SPELLING_WORDS,
    Term,
    number_to_chinese,
    number_to_english,
    number_words,
)

__all__ = [
    "ATTRIBUTES",
    "ATTRIBUTE_BY_KEY",
    "DEFAULT_SEED",
    "DICTIONARY",
    "HELDOUT_TASK",
    "LANGS",
    "PROFILE_LAYOUTS",
    "SPELLING_WORDS",
    "SPLITS",
    "TASKS",
    "Attribute",
    "DataConfig",
    "Document",
    "Example",
    "Person",
    "Term",
    "World",
    "fact_sentence",
    "instruction_splits",
    "load_corpus",
    "make_world",
    "number_to_chinese",
    "number_to_english",
    "number_words",
    "pretrain_corpus",
    "profile_card",
    "question",
    "split_fact_pairs",
    "world_to_dict",
    "write_dataset",
]
