"""Benchmark the BPE tokenizer: training time and encoding throughput.

The script writes its own corpus rather than timing ``data/corpus.jsonl``, whose small
synthetic world repeats a few hundred words: deterministic, mixed English-like and Chinese
text with a Zipf word distribution (a few very common words, a long tail of rare ones),
numbers and punctuation, so that the number of distinct chunks, and so the encoder's
cache hit rate, is like natural text's. Run ``python bench/bench_tokenizer.py``; results go to
``bench/results/tokenizer.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from itertools import accumulate
from pathlib import Path

from tinyllm_lib.tokenizer import Tokenizer

RESULTS = Path(__file__).parent / "results" / "tokenizer.json"

ONSETS = ["", "b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w"]
ONSETS += ["st", "tr", "ch", "sh", "th", "pl", "br", "gr"]
NUCLEI = ["a", "e", "i", "o", "u", "ai", "ea", "ou", "ie", "y"]
CODAS = ["", "", "n", "r", "s", "t", "l", "m", "nd", "ng", "ck", "st"]


class CorpusWriter:
    """Draws Zipf-distributed words and sentences from a seeded random generator."""

    def __init__(self, seed: int, english_words: int = 20_000, chinese_chars: int = 3_000):
        self.rng = random.Random(seed)
        words: set[str] = set()
        while len(words) < english_words:
            syllables = self.rng.choice([1, 1, 2, 2, 2, 3, 3, 4])
            words.add(
                "".join(
                    self.rng.choice(ONSETS) + self.rng.choice(NUCLEI) + self.rng.choice(CODAS)
                    for _ in range(syllables)
                )
            )
        self.english = sorted(words)
        self.rng.shuffle(self.english)
        self.chinese = [chr(0x4E00 + k) for k in range(0, 3 * chinese_chars, 3)]
        self.rng.shuffle(self.chinese)
        self.english_cum = list(accumulate(1 / (rank + 1) for rank in range(len(self.english))))
        self.chinese_cum = list(accumulate(1 / (rank + 1) for rank in range(len(self.chinese))))

    def english_sentence(self) -> str:
        words = self.rng.choices(
            self.english, cum_weights=self.english_cum, k=self.rng.randint(5, 16)
        )
        if self.rng.random() < 0.3:
            words.insert(self.rng.randrange(len(words)), str(self.rng.randint(0, 99_999)))
        if len(words) > 6 and self.rng.random() < 0.5:
            words[3] += ","
        return " ".join(words).capitalize() + self.rng.choice(".....?!")

    def chinese_sentence(self) -> str:
        chars = self.rng.choices(
            self.chinese, cum_weights=self.chinese_cum, k=self.rng.randint(8, 26)
        )
        if self.rng.random() < 0.3:
            chars.insert(self.rng.randrange(len(chars)), str(self.rng.randint(0, 9_999)))
        if len(chars) > 8:
            chars[self.rng.randint(3, len(chars) - 3)] += "，"
        return "".join(chars) + self.rng.choice("。。。？！")

    def paragraph(self) -> str:
        if self.rng.random() < 0.5:
            return " ".join(self.english_sentence() for _ in range(self.rng.randint(2, 6)))
        return "".join(self.chinese_sentence() for _ in range(self.rng.randint(2, 6)))

    def corpus(self, target_bytes: int) -> list[str]:
        """Documents of a few paragraphs each, until ``target_bytes`` of UTF-8."""
        docs, size = [], 0
        while size < target_bytes:
            doc = "\n\n".join(self.paragraph() for _ in range(self.rng.randint(1, 5)))
            docs.append(doc)
            size += len(doc.encode("utf-8")) + 1
        return docs


def megabytes(text: str) -> float:
    return len(text.encode("utf-8")) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=8.0, help="corpus size in MB (UTF-8)")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--runs", type=int, default=3, help="timed encoding runs per mode")
    args = parser.parse_args()

    writer = CorpusWriter(seed=0)
    docs = writer.corpus(int(args.mb * 1e6))
    text = "\n".join(docs)
    print(f"corpus: {len(docs)} documents, {megabytes(text):.2f} MB")

    start = time.perf_counter()
    tok = Tokenizer.train(docs, args.vocab_size)
    train_s = time.perf_counter() - start
    print(f"train to vocab {tok.vocab_size}: {train_s:.1f} s")

    # Cold: a fresh tokenizer whose chunk cache is empty, as when the corpus is encoded once.
    cold, warm = [], []
    for _ in range(args.runs):
        fresh = Tokenizer(tok.merges)
        start = time.perf_counter()
        ids = fresh.encode(text)
        cold.append(time.perf_counter() - start)
        start = time.perf_counter()
        fresh.encode(text)
        warm.append(time.perf_counter() - start)
    assert tok.decode(ids) == text

    start = time.perf_counter()
    tok.decode(ids)
    decode_s = time.perf_counter() - start

    english = " ".join(writer.english_sentence() for _ in range(2000))
    chinese = "".join(writer.chinese_sentence() for _ in range(2000))
    results = {
        "corpus_mb": round(megabytes(text), 3),
        "vocab_size": tok.vocab_size,
        "train_seconds": round(train_s, 2),
        "encode_cold_mb_per_s": round(megabytes(text) / statistics.median(cold), 2),
        "encode_warm_mb_per_s": round(megabytes(text) / statistics.median(warm), 2),
        "decode_mb_per_s": round(megabytes(text) / decode_s, 2),
        "bytes_per_token": round(len(text.encode("utf-8")) / len(ids), 3),
        "bytes_per_token_english": round(
            len(english.encode("utf-8")) / len(tok.encode(english)), 3
        ),
        "chars_per_token_chinese": round(len(chinese) / len(tok.encode(chinese)), 3),
        "encode_runs": args.runs,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(results, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
