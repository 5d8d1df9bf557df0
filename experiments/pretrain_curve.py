"""The loss curve of a pretraining run, from its training log: the figure in data/base/README.md.

    python experiments/pretrain_curve.py data/base/pretrain_log.jsonl data/base/loss_curve.png

The log is the JSON-lines file the trainer writes (one record per optimizer step, with
``val_loss`` at each evaluation). The best validation step is marked: the trainer restores
those weights at the end, so they are what ``pretrain`` saves. The script also prints the
training speed the log records (tokens/s: median, 10th and 90th percentile of the steps).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from tinyllm_lib import plots


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", type=Path, help="the pretraining log (JSON lines)")
    parser.add_argument("png", type=Path, help="where to write the figure")
    args = parser.parse_args()
    records = [json.loads(line) for line in args.log.read_text(encoding="utf-8").splitlines()]
    evaluated = [r for r in records if r["val_loss"] is not None]
    best = min(evaluated, key=lambda r: r["val_loss"])
    figure = plots.loss_curves(
        steps=[r["step"] for r in records], train_loss=[r["loss"] for r in records],
        val_steps=[r["step"] for r in evaluated], val_loss=[r["val_loss"] for r in evaluated],
        title="Pretraining the base model", best_step=best["step"],
    )
    figure.savefig(args.png, dpi=100)
    print(f"{len(records)} steps; best validation loss {best['val_loss']:.3f} at step "
          f"{best['step']}; wrote {args.png}")
    deciles = statistics.quantiles((r["tokens_per_s"] for r in records), n=10)
    print(f"tokens/s: median {statistics.median(r['tokens_per_s'] for r in records):,.0f}, "
          f"10th percentile {deciles[0]:,.0f}, 90th {deciles[-1]:,.0f}")


if __name__ == "__main__":
    main()
