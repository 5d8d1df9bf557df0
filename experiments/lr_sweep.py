"""How much the LoRA outcome depends on the learning rate, and on the random seed.

    python experiments/lr_sweep.py --lrs 1e-3 2e-3 3e-3 --seeds 0      # 5-8 minutes a run

Each run is a LoRA row of ``outcomes.py`` (``tinyllm train --epochs 3 --lora-targets
TARGETS``; ``--targets`` picks ``all-linear``, the default, or ``q_proj,v_proj``) with
``--lr`` and ``--seed`` set, scored by ``tinyllm eval`` on the test split and the held-out
facts. The seed draws the LoRA A matrices and the order of
the training batches, so runs that differ only in it show how far two fine-tunes of the same
recipe land apart: a learning rate is better only by more than that.

Results go to ``experiments/results/lr_sweep.json`` (added to, run by run; a run already
there is not repeated) and ``lr_sweep.md``.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from outcomes import REPO, RESULTS, evaluate_splits, run

from tinyllm_lib.cli import BASE_DIR

OUT = Path("outputs/lr_sweep")
SAVED = RESULTS / "lr_sweep.json"


def sweep_run(lr: str, seed: int, targets: str) -> dict:
    """Train one adapter with this learning rate and seed; evaluate it on both splits."""
    out = OUT / f"{targets}-lr{lr}-seed{seed}"
    args = ["train", "--base", str(BASE_DIR), "--epochs", "3", "--lora-targets", targets,
            "--lr", lr, "--seed", str(seed), "--out", str(out)]
    entry = {"lr": float(lr), "seed": seed, "targets": targets,
             "train_command": "tinyllm " + shlex.join(args).replace(f"{REPO}/", ""),
             "train_seconds": run(args)}
    reports = evaluate_splits(["--model", str(BASE_DIR), "--adapter", str(out / "adapter")], out)
    for split, report in reports.items():
        entry[split] = {"accuracy": report["accuracy"], "mean_accuracy": report["mean_accuracy"]}
    return entry


def write_table(entries: list[dict]) -> None:
    tasks = list(entries[0]["test"]["accuracy"])
    header = ["targets", "lr", "seed", *tasks, "mean", "held-out facts"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for e in sorted(entries, key=lambda e: (e["targets"], e["lr"], e["seed"])):
        lines.append("| " + " | ".join([
            e["targets"], f"{e['lr']:g}", str(e["seed"]),
            *(f"{100 * e['test']['accuracy'][t]:.0f}" for t in tasks),
            f"{100 * e['test']['mean_accuracy']:.1f}",
            f"{100 * e['heldout_facts']['mean_accuracy']:.1f}"]) + " |")
    text = "\n".join(lines) + "\n\nCommands:\n" + "\n".join(
        f"- `{e['train_command']}`" for e in entries) + "\n"
    (RESULTS / "lr_sweep.md").write_text(text)
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lrs", nargs="+", default=["1e-3", "2e-3", "3e-3"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--targets", default="all-linear")
    args = parser.parse_args()
    entries = json.loads(SAVED.read_text()) if SAVED.exists() else []
    for lr in args.lrs:
        for seed in args.seeds:
            if any(e["lr"] == float(lr) and e["seed"] == seed and e["targets"] == args.targets
                   for e in entries):
                continue
            entries.append(sweep_run(lr, seed, args.targets))
            SAVED.write_text(json.dumps(entries, indent=2) + "\n")
    write_table(entries)


if __name__ == "__main__":
    main()
