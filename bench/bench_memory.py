"""Peak memory of LoRA fine-tuning against full fine-tuning, each in a fresh process.

Full fine-tuning keeps, besides the weights, a gradient and two AdamW moments for every
parameter: four copies of the model. LoRA freezes the weights, so gradients and optimizer
state exist only for the small adapter matrices; the activations saved for the backward
pass remain, since the gradient must still flow back through the frozen layers.

A process's peak resident set size (``ru_maxrss``) never goes down, so each mode runs in
its own fresh Python process: ``model`` only builds the model and its optimizer, taking
no step (the floor every mode shares: interpreter, PyTorch, the weights, and the modules
AdamW loads), ``full`` and ``lora`` also take a few training steps at the seed's default
configuration, first as they are and then with gradient checkpointing
(``TinyLLM.gradient_checkpointing``), which keeps only each decoder block's input for
backward and so removes most of the activations both modes share.

LoRA's saving is the gradients and AdamW moments of the frozen weights, 12 bytes per
parameter in float32, while the floor and the activations stay. So its share of full
fine-tuning's peak depends on the model's size: a size sweep (``SWEEP``: the seed and two
larger models, same batch, freed memory returned at once, no checkpointing) measures where
it falls below the target.

Every run is made twice: with glibc's malloc as it comes, and with
``MALLOC_MMAP_THRESHOLD_`` fixed at 64 KiB. By default glibc raises that threshold as
large blocks are freed, after which tensors of up to 32 MiB come from its heap, and freed
heap memory is kept by the process rather than given back: the peak RSS then counts
memory that no tensor holds any more. With the threshold fixed, every tensor over 64 KiB
is its own mapping, returned to the system when the tensor is freed, so the peak is what
the training step really holds at once.

Run ``python bench/bench_memory.py``; results go to ``bench/results/memory.json`` and
``bench/results/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch
from common import config_summary, machine_info, peak_rss_mb, write_results

from tinyllm_lib.config import LoRAConfig, ModelConfig, TrainConfig
from tinyllm_lib.lora import apply_lora, count_parameters
from tinyllm_lib.model import TinyLLM, lm_loss_sum

MODES = ("model", "full", "lora")
RUNS = [("model", False), ("full", False), ("lora", False), ("full", True), ("lora", True)]
"""(mode, gradient checkpointing) of each measured process."""
ALLOCATORS = {"glibc default": {}, "mmap threshold 64 KiB": {"MALLOC_MMAP_THRESHOLD_": "65536"}}
"""Environment of each set of runs: malloc as it comes, and with big blocks always mapped."""
SWEEP = {
    "seed": ModelConfig(),
    "768 x 12": ModelConfig(hidden_size=768, num_layers=12, num_heads=12),
    "1024 x 16": ModelConfig(hidden_size=1024, num_layers=16, num_heads=16),
}
"""Model sizes (hidden size x layers) of the sweep; the seed's comes from the runs above."""
SWEEP_ALLOCATOR = "mmap threshold 64 KiB"
TARGET = 0.5
"""LoRA's peak should be at most this share of full fine-tuning's."""


def worker(
    mode: str, size: str, checkpointing: bool, steps: int, batch_size: int, seq_len: int,
    bf16: bool,
) -> None:
    """Build a ``size`` model, train it ``steps`` steps as ``mode`` says, print the peak."""
    torch.manual_seed(0)
    model = TinyLLM(SWEEP[size])
    model.gradient_checkpointing = checkpointing
    if mode == "lora":
        apply_lora(model, LoRAConfig())
    trainable, total = count_parameters(model)
    config = TrainConfig()
    optimizer = torch.optim.AdamW(  # as the Trainer builds it; its state comes at a step
        [p for p in model.parameters() if p.requires_grad], lr=config.lr,
        betas=config.betas, weight_decay=config.weight_decay, fused=True,
    )
    if mode != "model":
        ids = torch.randint(0, model.config.vocab_size, (batch_size, seq_len))
        for _ in range(steps):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = model(ids)
            nll, count = lm_loss_sum(logits, ids)
            (nll / count).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    print(json.dumps({"mode": mode, "size": size, "gradient_checkpointing": checkpointing,
                      "peak_rss_mb": round(peak_rss_mb(), 1),
                      "trainable": trainable, "total": total,
                      "trainable_share": round(trainable / total, 5)}))


def measure(
    mode: str, checkpointing: bool, allocator: str, args: argparse.Namespace, size: str = "seed"
) -> dict:
    """Run ``mode`` in a fresh interpreter and read back its one-line JSON report."""
    command = [sys.executable, __file__, "--worker", mode, "--size", size,
               "--steps", str(args.steps), "--batch-size", str(args.batch_size),
               "--seq-len", str(args.seq_len)]
    if args.bf16:
        command.append("--bf16")
    if checkpointing:
        command.append("--gradient-checkpointing")
    env = {**os.environ, **ALLOCATORS[allocator]}
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise SystemExit(f"bench_memory: the {mode} worker failed:\n{done.stderr}")
    result = {**json.loads(done.stdout.strip().splitlines()[-1]), "allocator": allocator}
    label = f"{size} {mode}" + (" + checkpointing" if checkpointing else "")
    print(f"{allocator:22s} {label:29s}: peak RSS {result['peak_rss_mb']:7.1f} MB, trainable "
          f"{result['trainable']:,} of {result['total']:,} ({result['trainable_share']:.2%})")
    return result


def ratios(peak: dict[tuple[str, bool], float]) -> dict:
    """LoRA's peak over full fine-tuning's, for one allocator's runs."""
    floor = peak["model", False]

    def lora_over_full(checkpointing: bool) -> dict:
        """Both with or both without checkpointing."""
        lora, full = peak["lora", checkpointing], peak["full", checkpointing]
        return {"lora_over_full": round(lora / full, 3),
                "lora_over_full_above_model": round((lora - floor) / (full - floor), 3),
                "target_met": lora / full <= TARGET}

    return {
        **lora_over_full(checkpointing=False),
        "with_checkpointing": lora_over_full(checkpointing=True),
        "lora_checkpointing_over_plain_full": round(peak["lora", True] / peak["full", False], 3),
    }


def sweep(runs: list[dict], args: argparse.Namespace) -> list[dict]:
    """LoRA against full fine-tuning at each size of ``SWEEP`` (the seed's from ``runs``)."""
    rows = []
    for size, config in SWEEP.items():
        if size == "seed":  # measured already, among the runs without checkpointing
            report = {r["mode"]: r for r in runs
                      if r["allocator"] == SWEEP_ALLOCATOR and not r["gradient_checkpointing"]}
        else:
            report = {mode: measure(mode, False, SWEEP_ALLOCATOR, args, size) for mode in MODES}
        peak = {mode: report[mode]["peak_rss_mb"] for mode in MODES}
        floor, full, lora = (peak[mode] for mode in MODES)
        state_mb = 12 * report["full"]["trainable"] / 2**20  # gradient + two moments, fp32
        rows.append({
            "size": size, "model": config_summary(config),
            "parameters": report["full"]["total"], "peak_rss_mb": peak,
            "lora_over_full": round(lora / full, 3),
            "full_state_mb": round(state_mb, 1),
            "lora_saving_mb": round(full - lora, 1),
            "floor_bound": round(floor / (floor + state_mb), 3),
            "target_met": lora / full <= TARGET,
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 step, 64 tokens")
    parser.add_argument("--steps", type=int, default=3, help="training steps per mode")
    parser.add_argument("--batch-size", type=int, default=TrainConfig().batch_size)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--bf16", action="store_true", help="train under bf16 autocast")
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--size", choices=list(SWEEP), default="seed", help=argparse.SUPPRESS)
    parser.add_argument("--gradient-checkpointing", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.steps, args.seq_len = 1, 64
    for flag in ("steps", "batch_size", "seq_len"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1")
    if args.seq_len > ModelConfig().max_seq_len:
        parser.error(f"--seq-len must be <= the seed model's context, {ModelConfig().max_seq_len}")
    if args.worker:
        worker(args.worker, args.size, args.gradient_checkpointing, args.steps,
               args.batch_size, args.seq_len, args.bf16)
        return

    machine = machine_info()
    runs = [measure(mode, checkpointing, allocator, args)
            for allocator in ALLOCATORS for mode, checkpointing in RUNS]
    by_allocator = {
        allocator: ratios({(r["mode"], r["gradient_checkpointing"]): r["peak_rss_mb"]
                           for r in runs if r["allocator"] == allocator})
        for allocator in ALLOCATORS
    }
    write_results("memory", {
        "benchmark": "memory",
        "machine": machine,
        "settings": {
            "size": "seed", "steps": args.steps, "batch_size": args.batch_size,
            "seq_len": args.seq_len, "precision": "bf16 autocast" if args.bf16 else "fp32",
            "lora": f"rank {LoRAConfig().rank}, targets {', '.join(LoRAConfig().target_modules)}",
            "optimizer": "AdamW (fused)",
            "allocators": {name: env or "as it comes" for name, env in ALLOCATORS.items()},
        },
        "model": config_summary(ModelConfig()),
        "runs": runs,
        "target": TARGET,
        "by_allocator": by_allocator,
        "sweep_allocator": SWEEP_ALLOCATOR,
        "sweep": sweep(runs, args),
    })


if __name__ == "__main__":
    main()
