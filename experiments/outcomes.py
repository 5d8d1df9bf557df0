"""Measured fine-tuning outcomes: the table in README.md comes from this script.

    python experiments/outcomes.py            # 30-40 minutes on 2 CPU cores

Every run goes through the command line exactly as a reader would type it:

- ``base``: the shipped base model, no fine-tuning;
- ``lora-qv``: ``tinyllm train --epochs 3`` (the CLI defaults: rank 8 on q_proj, v_proj);
- ``lora-all``: the same with ``--lora-targets all-linear``;
- ``full``: ``tinyllm train --epochs 3 --full``;
- ``scratch-lora``: the ``lora-qv`` training applied to an identical model with random
  weights (same tokenizer): the knowledge experiment's control.

Each is evaluated by ``tinyllm eval`` on the test split (eight task families) and on the
held-out facts (facts stated in pretraining, never in instruction data). Results go to
``experiments/results/outcomes.json`` and ``outcomes.md``.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

import torch

from tinyllm_lib.checkpoint import load_pretrained, save_pretrained
from tinyllm_lib.cli import main
from tinyllm_lib.config import BASE_DIR, DATA_DIR
from tinyllm_lib.model import TinyLLM

REPO = Path(__file__).resolve().parent.parent
OUT = Path("outputs/experiments")
RESULTS = Path(__file__).resolve().parent / "results"
TRAIN_RUNS = {
    "lora-qv-lr1e-4": ["--lr", "1e-4"],  # the seed's learning rate
    "lora-qv": [],
    "lora-all": ["--lora-targets", "all-linear"],
    "full": ["--full"],
    "scratch-lora": [],
}


def run(args: list[str]) -> float:
    """Run one CLI command in this process; return its wall time in seconds."""
    print(f"\n$ tinyllm {shlex.join(args)}", flush=True)
    start = time.time()
    if main(args) != 0:
        sys.exit(f"command failed: tinyllm {shlex.join(args)}")
    return time.time() - start


def scratch_model(path: Path) -> Path:
    """The base's architecture and tokenizer with fresh random weights."""
    base, tokenizer = load_pretrained(BASE_DIR)
    torch.manual_seed(0)
    save_pretrained(TinyLLM(base.config), tokenizer, path)
    return path


def evaluate_splits(flags: list[str], out: Path) -> dict[str, dict]:
    """``tinyllm eval`` of one model (``flags``: --model, maybe --adapter) on the test split
    and the held-out facts; each report is saved in ``out`` and returned by split name."""
    reports = {}
    for split in ("test", "heldout_facts"):
        report = out / f"{split}.json"
        run(["eval", *flags, "--data", str(DATA_DIR / f"{split}.jsonl"), "--json", str(report)])
        reports[split] = json.loads(report.read_text())
    return reports


def model_flags(name: str) -> list[str]:
    if name == "base":
        return ["--model", str(BASE_DIR)]
    if name == "full":
        return ["--model", str(OUT / name / "model")]
    base = OUT / "scratch-base" if name == "scratch-lora" else BASE_DIR
    return ["--model", str(base), "--adapter", str(OUT / name / "adapter")]


def main_experiment() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    saved = RESULTS / "outcomes.json"
    results: dict[str, dict] = {}
    for name in ["base", *TRAIN_RUNS]:
        entry: dict = {}
        if name in TRAIN_RUNS:
            base = scratch_model(OUT / "scratch-base") if name == "scratch-lora" else BASE_DIR
            args = ["train", "--base", str(base), "--epochs", "3", *TRAIN_RUNS[name],
                    "--out", str(OUT / name)]
            entry["train_command"] = "tinyllm " + shlex.join(args).replace(f"{REPO}/", "")
            entry["train_seconds"] = run(args)
        entry.update(evaluate_splits(model_flags(name), OUT / name))
        results[name] = entry
        saved.write_text(json.dumps(results, indent=2) + "\n")
    write_table(results)


def write_table(results: dict[str, dict]) -> None:
    tasks = list(results["base"]["test"]["accuracy"])
    header = ["run", *tasks, "mean", "held-out facts", "test ppl", "train min"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, entry in results.items():
        test, held = entry["test"], entry["heldout_facts"]
        cells = [name, *(f"{100 * test['accuracy'][t]:.0f}" for t in tasks),
                 f"{100 * test['mean_accuracy']:.1f}", f"{100 * held['mean_accuracy']:.1f}",
                 f"{test['perplexity']:.2f}",
                 f"{entry['train_seconds'] / 60:.1f}" if "train_seconds" in entry else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    commands = [f"- `{e['train_command']}`" for e in results.values() if "train_command" in e]
    text = "\n".join(lines) + "\n\nTraining commands:\n" + "\n".join(commands) + "\n"
    (RESULTS / "outcomes.md").write_text(text)
    print(text)


if __name__ == "__main__":
    if sys.argv[1:] == ["--table"]:  # rewrite outcomes.md from the saved JSON only
        write_table(json.loads((RESULTS / "outcomes.json").read_text()))
    else:
        main_experiment()
