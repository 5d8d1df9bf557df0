"""Splits: what each instruction example is about, and which go to train, val and test.

Every instruction example is about a *key*: a (person id, attribute) fact, a sum, a word
to translate, a list to sort. Keys, not examples, are split, before any example is drawn,
so val and test ask about things (facts, words, sums) that no train example of that family
asks about. The facts of the people who are not held out are split once, by
``split_fact_pairs``, for the corpus's Q/A documents and every instruction family alike.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Sequence

from .people import ATTRIBUTES, DataConfig, World

SPLITS = ("train", "val", "test")
Key = Hashable  # what one example is about; no key is shared between splits


def split_keys(
    keys: Sequence[Key], rng: random.Random, config: DataConfig, name: str
) -> dict[str, list[Key]]:
    """Shuffle, then the first keys are test, the next val, the rest train."""
    n_val, n_test = config.val_per_task, config.test_per_task
    if len(keys) < n_val + n_test + 1:
        raise ValueError(
            f"task {name!r}: only {len(keys)} distinct keys, cannot hold out "
            f"{n_val} val + {n_test} test"
        )
    keys = list(keys)
    rng.shuffle(keys)
    return {"test": keys[:n_test], "val": keys[n_test:n_test + n_val],
            "train": keys[n_test + n_val:]}


def split_fact_pairs(world: World, config: DataConfig) -> dict[str, list[tuple[int, str]]]:
    """Split the (person id, attribute) facts of non-held-out people into train/val/test.

    Corpus Q/A and every instruction family use only the train pairs; ``facts`` val/test ask
    about the other pairs, so those, like ``heldout_facts``, can only be answered from what
    pretraining stored.
    """
    pairs = [(p.id, a.key) for p in world.people if not p.heldout for a in ATTRIBUTES]
    return split_keys(pairs, random.Random(f"facts-{world.seed}"), config, "facts")
