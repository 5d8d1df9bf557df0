"""Where generation's time goes, for TinyLLM and transformers' ``generate`` side by side.

The same runs as ``bench_generate.py`` (batch 1, a 32-token prompt, 256 new tokens sampled
with temperature, top-k and top-p), each recorded by ``torch.profiler``: TinyLLM's default
``generate``, the same with ``compile_step=True`` (compiled in the unprofiled warm-up run),
and transformers' default ``generate``. Every ATen operator's own time goes to a category,
and the milliseconds per generated token are reported (median over a few profiled runs):

- ``matmul``: the linear layers' matrix-vector products (``mm``, ``addmm``, ``bmm``), the
  useful work: one pass over every weight per token, so bound by memory bandwidth;
- ``attention``: the fused scaled-dot-product attention kernel (transformers; TinyLLM
  writes its attention over the cache out, ``cached_attention``, so there its products
  are ``matmul`` and its mask and softmax ``elementwise``);
- ``sampling``: choosing the token from the logits (top-k, sorting for top-p, softmax,
  cumulative sum, drawing the sample): those operators on a ``[batch, vocab]`` or
  ``[batch, candidates]`` tensor; on the 4-dimensional attention scores, the same
  operators (softmax, masking) are ``elementwise``;
- ``casts``: dtype conversions and copies (``to``, ``copy_``);
- ``elementwise``: every other operator (norms, RoPE, SwiGLU, residual adds, cache
  writes, masks, ...);
- ``fused``: the kernels ``torch.compile`` generated, which do the elementwise work of a
  compiled step (``profile_train.py``'s category of the same name);
- ``framework``: the rest of the wall time: Python, operator dispatch, the decoding loop
  and the profiler's own overhead.

Run ``python bench/profile_generate.py``; results go to
``bench/results/profile_generate.json`` and ``bench/results/README.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence

import torch
from bench_generate import NEW_TOKENS, PROMPT_TOKENS, ours_run, theirs_run
from common import machine_info, model_pair, model_sizes, set_threads, write_results
from profile_train import category, profile_sides

from tinyllm_lib.sampling import SamplingConfig

CATEGORIES = ("matmul", "attention", "sampling", "casts", "elementwise", "fused", "framework")
SAMPLING_OPS = {"topk", "sort", "softmax", "_softmax", "cumsum", "scatter", "multinomial",
                "exponential_", "masked_fill", "masked_fill_", "argmax", "div", "div_"}
"""Operators that only the step from logits to a token runs (division: the temperature)."""


def generation_category(op: str, input_shapes: Sequence[Sequence[int]] = ()) -> str:
    """The category of an ATen operator in a generation run (see the module docstring)."""
    on_logits = not input_shapes or len(input_shapes[0]) <= 2
    if op.removeprefix("aten::") in SAMPLING_OPS and on_logits:
        return "sampling"
    name = category(op)
    return name if name in CATEGORIES else "elementwise"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmup", type=int, default=1, help="unprofiled runs per side")
    parser.add_argument("--repeats", type=int, default=3, help="profiled runs per side")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads (default: one per core)")
    parser.add_argument("--sizes", nargs="+", choices=["seed", "base"], default=["seed", "base"])
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    set_threads(args.threads)
    machine = machine_info()
    sampling = SamplingConfig(max_new_tokens=NEW_TOKENS, seed=0)
    runs = []
    for name in args.sizes:
        config = model_sizes()[name]
        context = PROMPT_TOKENS + NEW_TOKENS
        config = dataclasses.replace(config, max_seq_len=max(config.max_seq_len, context))
        ours, theirs = model_pair(config)
        ours.eval()
        theirs.eval()
        prompt = torch.randint(0, config.vocab_size, (PROMPT_TOKENS,),
                               generator=torch.Generator().manual_seed(3))
        sides = {"tinyllm": ours_run(ours, prompt, sampling, use_cache=True),
                 "tinyllm_compiled": ours_run(ours, prompt, sampling, use_cache=True,
                                              compile_step=True),
                 "transformers": theirs_run(theirs, prompt, sampling)}
        profiled = profile_sides(sides, args.warmup, args.repeats, CATEGORIES,
                                 generation_category)
        for side, ms in profiled.items():
            per_token = {key: round(value / NEW_TOKENS, 3) for key, value in ms.items()}
            runs.append({"size": name, "side": side, "ms_per_token": per_token})
            print(f"{name:5s} {side:16s} "
                  + " ".join(f"{k}={v:.2f}" for k, v in per_token.items()))
    write_results("profile_generate", {
        "benchmark": "profile_generate",
        "machine": machine,
        "settings": {"prompt_tokens": PROMPT_TOKENS, "new_tokens": NEW_TOKENS,
                     "repeats": args.repeats, "sampling": dataclasses.asdict(sampling),
                     "categories": list(CATEGORIES)},
        "runs": runs,
    })


if __name__ == "__main__":
    main()
