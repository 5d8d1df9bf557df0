"""Where a training step's time goes, for TinyLLM and transformers side by side.

``torch.profiler`` records every ATen operator of a training step (after warm-up steps);
each operator's own time (excluding operators it calls) is added to a category, and each
category's median over a few profiled steps is reported:

- ``matmul``: the matrix multiplies of the linear layers (``mm``, ``addmm``, ``bmm``);
- ``attention``: the fused scaled-dot-product attention kernels, forward and backward;
- ``loss``: log-softmax and negative log-likelihood over the vocabulary;
- ``optimizer``: the AdamW update;
- ``casts``: dtype conversions and copies (``to``, ``copy_``: bf16 autocast's casts);
- ``elementwise``: every other operator (norms, RoPE, SwiGLU, residual adds, ...);
- ``fused``: a compiled step's generated kernels (``torch.compile`` fuses the
  element-wise operators, the casts and the loss into them; they run inside the
  ``CompiledFxGraph`` calls, while the matrix multiplies and attention stay ATen
  operators);
- ``framework``: the rest of the step's wall time: Python, operator dispatch and the
  autograd engine's bookkeeping, with the profiler's own overhead.

The matrix multiplies are the useful work; everything else is the price of running
them, and where one implementation can beat another doing the same arithmetic.

Each implementation is profiled eager and compiled (the four sides of ``bench_train.py``).
Run ``python bench/profile_train.py``; results go to ``bench/results/profile_train.json``
and ``bench/results/README.md``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence

import torch
from bench_train import PRECISIONS, adamw, compiled_losses, training_sides
from common import machine_info, model_pair, model_sizes, set_threads, write_results
from torch.profiler import ProfilerActivity, profile

from tinyllm_lib.config import TrainConfig

CATEGORIES = (
    "matmul", "attention", "loss", "optimizer", "casts", "elementwise", "fused", "framework",
)
FUSED_EVENT = "## Call CompiledFxGraph"
"""The profiler's name for a call of a compiled graph; its own time is the fused kernels'."""


def category(op: str, input_shapes: Sequence[Sequence[int]] = ()) -> str:
    """The category of an ATen operator name or a compiled graph's call (see the module
    docstring); the shapes of its inputs are not needed here."""
    if op.startswith(FUSED_EVENT):
        return "fused"
    name = op.removeprefix("aten::")
    if name in ("mm", "addmm", "bmm"):
        return "matmul"
    if "scaled_dot_product" in name or "flash_attention" in name:
        return "attention"
    if "log_softmax" in name or "nll_loss" in name:
        return "loss"
    if "adam" in name:
        return "optimizer"
    if name in ("copy_", "_to_copy"):
        return "casts"
    return "elementwise"


def profile_step(
    step: Callable[[], None], categories: tuple[str, ...] = CATEGORIES,
    categorize: Callable[[str, Sequence[Sequence[int]]], str] = category,
) -> dict[str, float]:
    """Milliseconds per category for one profiled call of ``step``; ``categorize`` maps an
    ATen operator and the shapes of its inputs to one of ``categories``, which include
    ``framework`` (the unaccounted)."""
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        start = time.perf_counter()
        step()
        wall_ms = (time.perf_counter() - start) * 1e3
    ms = dict.fromkeys(categories, 0.0)
    for event in prof.key_averages(group_by_input_shape=True):
        if event.key.startswith(("aten::", FUSED_EVENT)):
            ms[categorize(event.key, event.input_shapes)] += event.self_cpu_time_total / 1e3
    ms["framework"] = max(0.0, wall_ms - sum(ms.values()))
    return {"total": wall_ms, **ms}


def profile_sides(
    sides: dict[str, Callable[[], None]], warmup: int, repeats: int,
    categories: tuple[str, ...] = CATEGORIES,
    categorize: Callable[[str, Sequence[Sequence[int]]], str] = category,
) -> dict[str, dict[str, float]]:
    """Per side, the median milliseconds per category over ``repeats`` profiled steps.

    The sides take turns, as in the timed benchmarks, so load from elsewhere hits both.
    """
    for _ in range(warmup):
        for step in sides.values():
            step()
    samples: dict[str, list[dict[str, float]]] = {side: [] for side in sides}
    for _ in range(repeats):
        for side, step in sides.items():
            samples[side].append(profile_step(step, categories, categorize))
    return {
        side: {key: round(statistics.median(s[key] for s in runs), 1) for key in runs[0]}
        for side, runs in samples.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=TrainConfig().batch_size)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=2, help="unprofiled steps per side")
    parser.add_argument("--repeats", type=int, default=3, help="profiled steps per side")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads (default: one per core)")
    parser.add_argument("--sizes", nargs="+", choices=["seed", "base"], default=["seed", "base"])
    args = parser.parse_args()
    for flag in ("batch_size", "seq_len", "repeats"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1")
    set_threads(args.threads)
    machine = machine_info()
    runs = []
    for name, config in model_sizes().items():
        if name not in args.sizes:
            continue
        seq_len = min(args.seq_len, config.max_seq_len)
        ids = torch.randint(0, config.vocab_size, (args.batch_size, seq_len))
        ours, theirs = model_pair(config)
        ours.train()
        theirs.train()
        optimizers = adamw(ours), adamw(theirs)
        compiled = compiled_losses(theirs)
        for precision, dtype in PRECISIONS.items():
            sides = training_sides(ours, theirs, ids, dtype, optimizers, compiled)
            for side, ms in profile_sides(sides, args.warmup, args.repeats).items():
                runs.append({"size": name, "precision": precision, "side": side,
                             "seq_len": seq_len, "ms": ms})
                print(f"{name:5s} {precision} {side:21s} "
                      + " ".join(f"{k}={v:.0f}" for k, v in ms.items()))
    write_results("profile_train", {
        "benchmark": "profile_train",
        "machine": machine,
        "settings": {"batch_size": args.batch_size, "seq_len": args.seq_len,
                     "repeats": args.repeats, "optimizer": "AdamW (fused)",
                     "categories": list(CATEGORIES)},
        "runs": runs,
    })


if __name__ == "__main__":
    main()
