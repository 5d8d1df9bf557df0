"""Peak memory of a LoRA DPO step against a LoRA SFT step: no second model in memory.

DPO compares the policy with a frozen reference. A second copy of the model would double
the weights; here the reference is the policy with its adapter switched off
(``DPOObjective``), so the only extra memory is what the reference's forward pass needs
while it runs, without gradients, plus two numbers per pair. What does grow is the batch:
a batch of B pairs is 2B sequences (chosen and rejected go through the model together),
so DPO's activations are those of an SFT batch twice the size.

Each mode runs in a fresh process (peak RSS never goes down), through the real
``Trainer`` for a few steps, on sequences of a fixed length whose first quarter is the
prompt:

- ``model``: builds the model, the adapter and the optimizer, takes no step (the floor);
- ``sft``: B conversations a step (``NextTokenNLL``);
- ``sft-2x``: 2B conversations a step, as many sequences as DPO's forward pass;
- ``dpo``: B pairs a step, the reference computed live with the adapter off;
- ``dpo-precomputed``: B pairs, the reference log-probabilities computed before training.

The target, DPO's peak at most 1.3x SFT's at the same batch, is read both ways: B pairs
against B conversations (the issue's words), and against the same number of sequences.
The allocator is glibc's with ``MALLOC_MMAP_THRESHOLD_`` fixed at 64 KiB, so that freed
tensors go back to the system and the peak is what a step really holds
(``bench_memory.py`` explains why).

Run ``python bench/bench_dpo_memory.py``; results go to ``bench/results/dpo_memory.json``
and ``bench/results/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch
from bench_memory import ALLOCATORS
from common import config_summary, machine_info, model_sizes, peak_rss_mb, write_results

from tinyllm_lib.chat import IGNORE_INDEX, EncodedChat
from tinyllm_lib.config import DPOConfig, LoRAConfig, TrainConfig
from tinyllm_lib.dpo import DPOObjective, EncodedPair, precompute_reference
from tinyllm_lib.lora import apply_lora
from tinyllm_lib.model import TinyLLM
from tinyllm_lib.train import Trainer

MODES = ("model", "sft", "sft-2x", "dpo", "dpo-precomputed")
ALLOCATOR = "mmap threshold 64 KiB"
TARGET = 1.3
"""A LoRA DPO step's peak should be at most this multiple of a LoRA SFT step's."""


def conversation(seq_len: int, vocab: int, generator: torch.Generator,
                 prompt: list[int] | None = None) -> EncodedChat:
    """``seq_len`` random tokens, the first quarter a prompt (unlabelled)."""
    prompt_len = seq_len // 4
    if prompt is None:
        prompt = torch.randint(1, vocab, (prompt_len,), generator=generator).tolist()
    reply = torch.randint(1, vocab, (seq_len - prompt_len,), generator=generator).tolist()
    return EncodedChat(prompt + reply, [IGNORE_INDEX] * prompt_len + reply)


def worker(mode: str, size: str, steps: int, batch_size: int, seq_len: int) -> None:
    """Build the ``size`` model with a LoRA adapter, train ``steps`` steps, print the peak."""
    torch.manual_seed(0)
    model = TinyLLM(model_sizes()[size])
    apply_lora(model, LoRAConfig())
    vocab, generator = model.config.vocab_size, torch.Generator().manual_seed(0)
    count = steps * batch_size * (2 if mode == "sft-2x" else 1)
    if mode.startswith("dpo"):
        examples: list = []
        for _ in range(count):
            chosen = conversation(seq_len, vocab, generator)
            prompt = chosen.input_ids[: seq_len // 4]
            examples.append(EncodedPair(chosen, conversation(seq_len, vocab, generator, prompt)))
        objective = DPOObjective(DPOConfig(precompute_ref=mode == "dpo-precomputed"))
        if mode == "dpo-precomputed":
            precompute_reference(model, examples, batch_size, average=False)
    else:
        examples = [conversation(seq_len, vocab, generator) for _ in range(count)]
        objective = None
    config = TrainConfig(batch_size=batch_size * (2 if mode == "sft-2x" else 1),
                         max_steps=steps if mode != "model" else 1, warmup_steps=1)
    trainer = Trainer(model, examples, [], config, pad_id=0, device="cpu", progress=False,
                      objective=objective)
    if mode != "model":
        trainer.fit()
    print(json.dumps({"mode": mode, "size": size, "peak_rss_mb": round(peak_rss_mb(), 1)}))


def measure(mode: str, size: str, args: argparse.Namespace) -> dict:
    """Run ``mode`` in a fresh interpreter and read back its one-line JSON report."""
    command = [sys.executable, __file__, "--worker", mode, "--size", size,
               "--steps", str(args.steps), "--batch-size", str(args.batch_size),
               "--seq-len", str(args.seq_len)]
    env = {**os.environ, **ALLOCATORS[ALLOCATOR]}
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise SystemExit(f"bench_dpo_memory: the {mode} worker failed:\n{done.stderr}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{size:5s} {mode:16s}: peak RSS {result['peak_rss_mb']:7.1f} MB", flush=True)
    return result


def ratios(peak: dict[str, float]) -> dict:
    """DPO's peaks over SFT's, whole and above the floor (the process holding the model)."""
    floor = peak["model"]

    def over(mode: str, sft: str) -> dict:
        return {"ratio": round(peak[mode] / peak[sft], 3),
                "above_model": round((peak[mode] - floor) / (peak[sft] - floor), 3),
                "target_met": peak[mode] / peak[sft] <= TARGET}

    return {
        "dpo_over_sft_same_batch": over("dpo", "sft"),
        "dpo_over_sft_same_sequences": over("dpo", "sft-2x"),
        "precomputed_over_sft_same_batch": over("dpo-precomputed", "sft"),
        "reference_pass_mb": round(peak["dpo"] - peak["dpo-precomputed"], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="training steps per mode")
    parser.add_argument("--batch-size", type=int, default=TrainConfig().batch_size,
                        help="conversations (SFT) or pairs (DPO) a step")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--size", choices=list(model_sizes()), default="seed",
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    for flag in ("steps", "batch_size", "seq_len"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1")
    if args.worker:
        worker(args.worker, args.size, args.steps, args.batch_size, args.seq_len)
        return
    machine = machine_info()
    sizes = {}
    for size, config in model_sizes().items():
        peak = {mode: measure(mode, size, args)["peak_rss_mb"] for mode in MODES}
        sizes[size] = {"model": config_summary(config), "peak_rss_mb": peak, **ratios(peak)}
        same = sizes[size]["dpo_over_sft_same_batch"]
        print(f"{size}: DPO / SFT at batch {args.batch_size}: {same['ratio']:.2f}x "
              f"(target <= {TARGET}x: {'met' if same['target_met'] else 'not met'})")
    write_results("dpo_memory", {
        "benchmark": "dpo_memory",
        "machine": machine,
        "settings": {"steps": args.steps, "batch_size": args.batch_size,
                     "seq_len": args.seq_len, "allocator": ALLOCATOR,
                     "lora": f"rank {LoRAConfig().rank}, targets "
                             f"{', '.join(LoRAConfig().target_modules)}"},
        "target": TARGET,
        "sizes": sizes,
    })


if __name__ == "__main__":
    main()
