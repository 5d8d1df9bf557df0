"""Training throughput of TinyLLM against transformers' LlamaForCausalLM, side by side.

A training step is a forward pass, the loss, the backward pass and an AdamW update, on a
batch of random token ids (the speed does not depend on what the tokens say). Both models
start from the same weights and use the same optimizer: PyTorch's fused AdamW, the
fastest it has, with the Trainer's default hyperparameters. Two sizes (the seed's
default and the shipped base) and two precisions: float32, and bf16 autocast as
``--bf16`` training uses it (weights and optimizer in float32, matrix multiplies in bf16).

Each side also runs compiled. TinyLLM's loss is the library's ``batch_nll_sum``, the
function the Trainer calls for each micro-batch (forward pass and loss), and its compiled
side is ``torch.compile`` of that function, as ``TrainConfig(compile=True)`` (``--compile``)
trains; transformers' compiled side is ``torch.compile`` of its model, whose forward pass
computes the loss when given labels. The speedup target is judged on TinyLLM's faster way
against transformers' default (eager) step, and compiled against compiled is reported
like for like.

Achieved GFLOP/s is the arithmetic of a step (see ``training_flops_per_token``) divided
by its time; it is set against this machine's measured matrix-multiply peak, so the
distance to the hardware limit is visible. A probe before the runs finds the square size
at which a multiply runs fastest; that multiply is then timed in the same alternated
rounds as the steps (``peak_matmul``), and its median rate is the run's peak.

Run ``python bench/bench_train.py`` (``--quick`` for a smoke run); results go to
``bench/results/train.json`` and ``bench/results/README.md``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from common import (
    Timings,
    alternate,
    check_parity,
    config_summary,
    machine_info,
    model_pair,
    model_sizes,
    set_threads,
    speedups,
    write_results,
)
from torch import nn

from tinyllm_lib.config import ModelConfig, TrainConfig
from tinyllm_lib.model import TinyLLM
from tinyllm_lib.train import batch_nll_sum

PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}
"""Precision name -> autocast dtype (None: plain float32)."""
PEAK_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SPEEDUP_TARGETS = {"seed": 1.1, "base": 1.5}
PEAK_FRACTION_TARGET = 0.7
"""Share of the matmul peak a step should reach in the run named by ``PEAK_TARGET_RUN``."""
PEAK_TARGET_RUN = ("seed", "bf16")


def training_flops_per_token(config: ModelConfig, seq_len: int) -> float:
    """Floating-point operations of one training step per token (2 per multiply-add).

    The forward pass multiplies each token's activations by every weight matrix once
    (q, k, v, o, the three MLP matrices per layer, and the output head), and in attention
    each query meets the keys and values of its position and the ones before it: on
    average ``(seq_len + 1) / 2`` of them, since causal attention skips the rest. The
    backward pass costs twice the forward (a gradient for the input and one for the
    weight), so a step costs three forward passes. Norms, RoPE, softmax and the optimizer
    are left out: they are cheap in FLOPs, though not in time.
    """
    hidden, kv = config.hidden_size, config.kv_heads * config.head_dim
    per_layer = 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * config.mlp_size
    weights = config.num_layers * per_layer + config.vocab_size * hidden
    attention = config.num_layers * 2 * hidden * (seq_len + 1) / 2
    return 3 * 2 * (weights + attention)


def matmul_gflops(dtype: torch.dtype, size: int, repeats: int) -> float:
    """Median GFLOP/s of a ``size x size`` by ``size x size`` matrix multiply."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    a @ b  # warm up: thread pool, packing buffers
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        seconds.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(seconds) / 1e9


def matmul_peak(dtype: torch.dtype, sizes: tuple[int, ...], repeats: int) -> dict[str, Any]:
    """The machine's matrix-multiply peak: the best median rate over a few square sizes."""
    by_size = {size: round(matmul_gflops(dtype, size, repeats), 1) for size in sizes}
    return {"gflops": max(by_size.values()), "by_size": by_size,
            "size": max(by_size, key=by_size.get)}


def peak_matmul(dtype: torch.dtype, size: int) -> Callable[[], None]:
    """One ``size x size`` matrix multiply, timed as one more side of the alternated rounds.

    The peak probed before the runs can come from a quieter (or busier) moment than the
    steps it is set against; on a shared machine the rate of the same bf16 multiply can
    change by more than 2x within a minute. Timed in the same rounds as the steps, it
    meets the same load, so a step's share of it compares like with like.
    """
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    return lambda: a @ b


def adamw(model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer both sides use: the Trainer's AdamW settings, PyTorch's fused kernel."""
    config = TrainConfig()
    return torch.optim.AdamW(
        model.parameters(), lr=config.lr, betas=config.betas,
        weight_decay=config.weight_decay, fused=True,
    )


def training_step(
    loss_of_batch: Callable[[], torch.Tensor], optimizer: torch.optim.Optimizer
) -> Callable[[], None]:
    """One full step: loss, backward, optimizer update, gradients cleared."""

    def step() -> None:
        loss_of_batch().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def autocast(dtype: torch.dtype | None) -> torch.autocast:
    """Autocast to ``dtype`` as ``--bf16`` training does, or nothing for plain float32."""
    return torch.autocast("cpu", dtype=dtype, enabled=dtype is not None)


def ours_loss(
    model: TinyLLM, ids: torch.Tensor, dtype: torch.dtype | None,
    nll_sum: Callable[..., torch.Tensor] = batch_nll_sum,
) -> Callable[[], torch.Tensor]:
    """TinyLLM's mean next-token loss, computed by the Trainer's own ``batch_nll_sum`` (or
    the compiled twin of it that ``TrainConfig(compile=True)`` uses)."""
    label_tokens = ids[:, 1:].numel()  # random ids: every shifted label counts

    def loss() -> torch.Tensor:
        return nll_sum(model, ids, ids, dtype == torch.bfloat16) / label_tokens

    return loss


def theirs_loss(
    model: nn.Module, ids: torch.Tensor, dtype: torch.dtype | None
) -> Callable[[], torch.Tensor]:
    """transformers' mean next-token loss, computed the way its users do (``labels=``)."""

    def loss() -> torch.Tensor:
        with autocast(dtype):
            return model(input_ids=ids, labels=ids).loss

    return loss


def side_summary(timings: Timings, tokens: int, flops: float, peak: float) -> dict[str, Any]:
    """Median throughput of one side, and every sample (wall and CPU seconds per step)."""
    median = statistics.median(timings.wall)
    return {
        "tokens_per_s": round(tokens / median, 1),
        "step_s_median": round(median, 4),
        "gflops": round(flops / median / 1e9, 1),
        "peak_fraction": round(flops / median / 1e9 / peak, 3),
        "step_s": [round(s, 4) for s in timings.wall],
        "step_cpu_s": [round(s, 4) for s in timings.cpu],
    }


def compiled_losses(theirs: nn.Module) -> tuple[Callable[..., torch.Tensor], nn.Module]:
    """What the compiled sides call: ``torch.compile`` of TinyLLM's ``batch_nll_sum``, as
    the Trainer compiles it, and of transformers' model.

    Compiled from scratch for each model size, as in a process that trains one model:
    ``torch.compile`` remembers what it compiled before, and at a second size it would mark
    the numbers that changed (heads, context) as dynamic and build slower graphs generic
    in them (automatic dynamic shapes), which a real training run never sees.
    """
    torch._dynamo.reset()
    return torch.compile(batch_nll_sum), torch.compile(theirs)


def training_sides(
    ours: nn.Module, theirs: nn.Module, ids: torch.Tensor, dtype: torch.dtype | None,
    optimizers: tuple[torch.optim.Optimizer, torch.optim.Optimizer],
    compiled: tuple[Callable[..., torch.Tensor], nn.Module],
) -> dict[str, Callable[[], None]]:
    """The four sides of one precision: each implementation's step eager and compiled.

    ``compiled`` comes from ``compiled_losses``: the compiled sides share the models'
    weights and optimizers, and their first step builds a graph for this precision.
    """
    ours_optimizer, theirs_optimizer = optimizers
    compiled_ours, compiled_theirs = compiled
    return {
        "tinyllm": training_step(ours_loss(ours, ids, dtype), ours_optimizer),
        "tinyllm_compiled": training_step(ours_loss(ours, ids, dtype, compiled_ours),
                                          ours_optimizer),
        "transformers": training_step(theirs_loss(theirs, ids, dtype), theirs_optimizer),
        "transformers_compiled": training_step(
            theirs_loss(compiled_theirs, ids, dtype), theirs_optimizer),
    }


def bench_size(
    name: str, config: ModelConfig, args: argparse.Namespace, peak_sizes: dict[str, int]
) -> tuple[float, list[dict[str, Any]]]:
    """Parity, then every precision's interleaved timings, for one model size."""
    seq_len = min(args.seq_len, config.max_seq_len)
    ours, theirs = model_pair(config)
    parity = check_parity(ours, theirs, name)
    ours.train()
    theirs.train()
    ours_optimizer, theirs_optimizer = adamw(ours), adamw(theirs)
    compiled = compiled_losses(theirs)
    ids = torch.randint(0, config.vocab_size, (args.batch_size, seq_len),
                        generator=torch.Generator().manual_seed(2))
    tokens = args.batch_size * seq_len
    flops = training_flops_per_token(config, seq_len) * tokens
    runs = []
    for precision in args.precisions:
        dtype = PRECISIONS[precision]
        peak_size = peak_sizes[precision]
        timings = alternate(
            {**training_sides(ours, theirs, ids, dtype, (ours_optimizer, theirs_optimizer),
                              compiled),
             "matmul_peak": peak_matmul(PEAK_DTYPES[precision], peak_size)},
            rounds=args.rounds, warmup=args.warmup,
        )
        peak = 2 * peak_size**3 / statistics.median(timings.pop("matmul_peak").wall) / 1e9
        run: dict[str, Any] = {
            "size": name, "precision": precision, "batch_size": args.batch_size,
            "seq_len": seq_len, "tokens_per_step": tokens, "flops_per_step": flops,
            "matmul_peak_gflops": round(peak, 1), "matmul_peak_size": peak_size,
        }
        for side, side_timings in timings.items():
            run[side] = side_summary(side_timings, tokens, flops, peak)
        run.update(speedups(timings, ours="tinyllm"))
        # Judged on TinyLLM's faster way (TrainConfig.compile is one flag) against
        # transformers as its users train by default, like the generation target.
        run["speedup_target"] = SPEEDUP_TARGETS[name]
        run["speedup_met"] = max(run["speedup"], run["speedup_compiled"]) >= run["speedup_target"]
        if (name, precision) == PEAK_TARGET_RUN:
            best = max(run["tinyllm"]["peak_fraction"], run["tinyllm_compiled"]["peak_fraction"])
            run["peak_fraction_target"] = PEAK_FRACTION_TARGET
            run["peak_fraction_met"] = best >= PEAK_FRACTION_TARGET
        print(
            f"{name:5s} {precision}: TinyLLM {run['tinyllm']['tokens_per_s']:8.0f} tok/s "
            f"({run['tinyllm']['gflops']:.0f} GFLOP/s), compiled "
            f"{run['tinyllm_compiled']['tokens_per_s']:8.0f} "
            f"({run['tinyllm_compiled']['gflops']:.0f} GFLOP/s); transformers "
            f"{run['transformers']['tokens_per_s']:8.0f}, compiled "
            f"{run['transformers_compiled']['tokens_per_s']:8.0f} tok/s -> "
            f"{run['speedup']:.2f}x eager, {run['speedup_compiled']:.2f}x compiled (target "
            f"{SPEEDUP_TARGETS[name]}x), {run['speedup_compiled_vs_compiled']:.2f}x compiled "
            f"vs compiled; matmul peak in the same rounds {peak:.0f} GFLOP/s"
        )
        runs.append(run)
    return parity, runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2 rounds, 64-token sequences, small peak probe")
    parser.add_argument("--batch-size", type=int, default=TrainConfig().batch_size)
    parser.add_argument("--seq-len", type=int, default=256,
                        help="tokens per sequence (capped at the model's context)")
    parser.add_argument("--rounds", type=int, default=8, help="timed steps per side")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per side")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads (default: one per core)")
    parser.add_argument("--sizes", nargs="+", choices=["seed", "base"], default=["seed", "base"])
    parser.add_argument("--precisions", nargs="+", choices=list(PRECISIONS),
                        default=list(PRECISIONS))
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.warmup, args.seq_len = 2, 1, 64
    for flag in ("batch_size", "seq_len", "rounds"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1")
    threads = set_threads(args.threads)
    machine = machine_info()

    sizes = (256, 512) if args.quick else (512, 1024, 2048)
    peak_detail = {p: matmul_peak(PEAK_DTYPES[p], sizes, 3 if args.quick else 7)
                   for p in args.precisions}
    print(f"matmul peak probe with {threads} threads: " + ", ".join(
        f"{p} {d['gflops']:.0f} GFLOP/s at {d['size']}" for p, d in peak_detail.items()))

    configs = model_sizes()
    parity, runs = {}, []
    peak_sizes = {p: detail["size"] for p, detail in peak_detail.items()}
    for name in args.sizes:
        parity[name], size_runs = bench_size(name, configs[name], args, peak_sizes)
        runs += size_runs
    write_results("train", {
        "benchmark": "train",
        "machine": machine,
        "settings": {
            "batch_size": args.batch_size, "seq_len": args.seq_len, "rounds": args.rounds,
            "warmup": args.warmup, "quick": args.quick, "optimizer": "AdamW (fused)",
            "threads": threads,
            "timing": "sides alternated; speedup = median of per-round time ratios",
        },
        "models": {name: config_summary(configs[name]) for name in args.sizes},
        "parity_max_abs_logits_diff": parity,
        "matmul_peak_probe": peak_detail,
        "runs": runs,
    })


if __name__ == "__main__":
    main()
