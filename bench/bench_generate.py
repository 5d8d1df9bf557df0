"""Generation speed of TinyLLM against transformers' ``generate``, on the same weights.

Batch 1, a 32-token prompt, 256 new tokens sampled with temperature, top-k and top-p (the
library's default sampling settings, given to both). End-of-text is switched off on both
sides, so every run makes exactly 256 tokens. Timings include the prompt's forward pass
(prefill). TinyLLM runs three ways: as ``generate`` runs by default (eager PyTorch), with
``compile_step=True`` (each decode step through ``torch.compile``; the one-time compilation
happens in the warm-up run, outside the timings, and is reported as ``first_run_seconds``:
the script compiles into a fresh, empty compile cache, so that is a cold start), and
without its KV cache, recomputing the whole sequence for every new token, to show what the
cache saves. transformers runs its default ``generate`` (eager, dynamic cache), against
which the target is set, and its own compiled path (static cache and ``torch.compile``), as
the like-for-like reference for TinyLLM's compiled step. The target is judged on TinyLLM's
faster way; the table shows every side. A last side only reads the weights
(``weights_read_run``): the matrix-vector products of 256 decode steps and nothing else,
the ceiling for decoding on this machine.

The contexts are widened to prompt + new tokens where a model's is shorter (the shipped
base has 256 positions): RoPE has no learned positions, so the weights are unchanged.

Run ``python bench/bench_generate.py`` (``--quick`` for a smoke run); results go to
``bench/results/generate.json`` and ``bench/results/README.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from common import (
    Timings,
    alternate,
    check_parity,
    config_summary,
    machine_info,
    model_pair,
    model_sizes,
    paired_speedup,
    require_transformers,
    set_threads,
    speedups,
    write_results,
)
from torch import nn

from tinyllm_lib.model import TinyLLM
from tinyllm_lib.sampling import SamplingConfig, generate

PROMPT_TOKENS = 32
NEW_TOKENS = 256
SPEEDUP_TARGET = 3.0
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
"""Weight dtype of both models while generating (no autocast: inference casts once)."""


def ours_run(model: TinyLLM, prompt: torch.Tensor, sampling: SamplingConfig,
             use_cache: bool, compile_step: bool = False) -> Callable[[], None]:
    def run() -> None:
        ids = list(generate(model, prompt, sampling, use_cache=use_cache,
                            compile_step=compile_step))
        assert len(ids) == sampling.max_new_tokens, f"TinyLLM stopped after {len(ids)} tokens"

    return run


def weights_read_run(model: TinyLLM, tokens: int) -> Callable[[], None]:
    """Every weight matrix times one activation row, ``tokens`` times over: a decode step's
    matrix-vector products and nothing else. A decode step must read every weight once;
    for a model larger than the caches that reading is bounded by memory bandwidth, so
    this side's tokens/s is the ceiling any implementation's decoding can reach here.
    (A tied head is one matrix: ``parameters()`` lists it once.)"""
    matrices = [weight for weight in model.parameters() if weight.dim() == 2]
    rows = {width: torch.randn(1, width, dtype=matrices[0].dtype)
            for width in {weight.shape[1] for weight in matrices}}

    def run() -> None:
        with torch.inference_mode():
            for _ in range(tokens):
                for weight in matrices:
                    F.linear(rows[weight.shape[1]], weight)

    return run


def theirs_run(model: nn.Module, prompt: torch.Tensor, sampling: SamplingConfig,
               compiled: bool = False) -> Callable[[], None]:
    """transformers' ``generate``: by default as it comes (eager, dynamic cache); with
    ``compiled``, its own fast path, a static cache and ``torch.compile`` of the forward
    pass (which it uses unasked on GPUs only, so it is asked for here)."""
    ids = prompt[None]
    options: dict[str, Any] = {}
    if compiled:
        compile_config = require_transformers().CompileConfig()
        compile_config._compile_all_devices = True  # the CPU too
        options = {"cache_implementation": "static", "compile_config": compile_config}

    def run() -> None:
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), do_sample=True,
            temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p,
            max_new_tokens=sampling.max_new_tokens, eos_token_id=None, pad_token_id=0,
            **options,
        )
        made = out.shape[1] - ids.shape[1]
        assert made == sampling.max_new_tokens, f"transformers stopped after {made} tokens"

    return run


def side_summary(timings: Timings, tokens: int) -> dict[str, Any]:
    """Median throughput of one side, and every sample (wall and CPU seconds per run)."""
    median = statistics.median(timings.wall)
    return {
        "tokens_per_s": round(tokens / median, 1),
        "seconds_median": round(median, 4),
        "first_run_seconds": round(timings.first_run, 2),
        "seconds": [round(s, 4) for s in timings.wall],
        "cpu_seconds": [round(s, 4) for s in timings.cpu],
    }


def bench_size(name: str, args: argparse.Namespace,
               sampling: SamplingConfig) -> tuple[float, list[dict[str, Any]]]:
    config = model_sizes()[name]
    context = PROMPT_TOKENS + sampling.max_new_tokens
    config = dataclasses.replace(config, max_seq_len=max(config.max_seq_len, context))
    ours, theirs = model_pair(config)
    parity = check_parity(ours, theirs, name)
    prompt = torch.randint(0, config.vocab_size, (PROMPT_TOKENS,),
                           generator=torch.Generator().manual_seed(3))
    runs = []
    for precision in args.precisions:
        ours.to(DTYPES[precision]).eval()
        theirs.to(DTYPES[precision]).eval()
        timings = alternate(
            {
                "tinyllm_cache": ours_run(ours, prompt, sampling, use_cache=True),
                "tinyllm_compiled": ours_run(ours, prompt, sampling, use_cache=True,
                                             compile_step=True),
                "transformers": theirs_run(theirs, prompt, sampling),
                "transformers_compiled": theirs_run(theirs, prompt, sampling, compiled=True),
                "tinyllm_no_cache": ours_run(ours, prompt, sampling, use_cache=False),
                "weights_read": weights_read_run(ours, sampling.max_new_tokens),
            },
            rounds=args.rounds, warmup=1,
        )
        run: dict[str, Any] = {"size": name, "precision": precision, "context": context}
        for side, side_timings in timings.items():
            run[side] = side_summary(side_timings, sampling.max_new_tokens)
        run.update(speedups(timings, ours="tinyllm_cache"))
        best = max(run["speedup"], run["speedup_compiled"])
        run["speedup_target"] = SPEEDUP_TARGET
        run["speedup_met"] = best >= SPEEDUP_TARGET
        run["cache_speedup"] = round(
            paired_speedup(timings["tinyllm_no_cache"].wall, timings["tinyllm_cache"].wall), 2
        )
        run["compiled_share_of_weights_read"] = round(
            1 / paired_speedup(timings["tinyllm_compiled"].wall, timings["weights_read"].wall), 3
        )
        print(
            f"{name:5s} {precision}: TinyLLM {run['tinyllm_cache']['tokens_per_s']:6.0f} tok/s, "
            f"compiled {run['tinyllm_compiled']['tokens_per_s']:6.0f} "
            f"(no cache {run['tinyllm_no_cache']['tokens_per_s']:5.0f}), transformers "
            f"{run['transformers']['tokens_per_s']:6.0f} tok/s -> {run['speedup']:.2f}x eager, "
            f"{run['speedup_compiled']:.2f}x compiled (target {SPEEDUP_TARGET}x); compiled vs "
            f"transformers compiled ({run['transformers_compiled']['tokens_per_s']:.0f} tok/s) "
            f"{run['speedup_compiled_vs_compiled']:.2f}x; reading the weights alone "
            f"{run['weights_read']['tokens_per_s']:.0f} tok/s (compiled step at "
            f"{run['compiled_share_of_weights_read']:.0%} of it)"
        )
        runs.append(run)
    return parity, runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round, 32 tokens")
    parser.add_argument("--rounds", type=int, default=3, help="timed runs per side")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads (default: one per core)")
    parser.add_argument("--sizes", nargs="+", choices=["seed", "base"], default=["seed", "base"])
    parser.add_argument("--precisions", nargs="+", choices=list(DTYPES), default=["fp32"])
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    new_tokens = NEW_TOKENS
    if args.quick:
        args.rounds, new_tokens = 1, 32
    threads = set_threads(args.threads)
    machine = machine_info()
    sampling = SamplingConfig(max_new_tokens=new_tokens, seed=0)
    parity, runs = {}, []
    # Compile into an empty cache: the first run's time is then a cold compile, whatever
    # ran before on this machine.
    with tempfile.TemporaryDirectory(prefix="bench-generate-inductor-") as cache_dir:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache_dir
        for name in args.sizes:
            parity[name], size_runs = bench_size(name, args, sampling)
            runs += size_runs
    sampling_text = (f"temperature {sampling.temperature}, top-k {sampling.top_k}, "
                     f"top-p {sampling.top_p}")
    write_results("generate", {
        "benchmark": "generate",
        "machine": machine,
        "settings": {
            "prompt_tokens": PROMPT_TOKENS, "new_tokens": new_tokens, "rounds": args.rounds,
            "quick": args.quick, "sampling": sampling_text, "batch_size": 1,
            "transformers_cache": "default (DynamicCache); compiled: static cache",
            "threads": threads,
            "timing": "sides alternated; speedup = median of per-round time ratios",
        },
        "models": {name: config_summary(model_sizes()[name]) for name in args.sizes},
        "parity_max_abs_logits_diff": parity,
        "runs": runs,
    })


if __name__ == "__main__":
    main()
