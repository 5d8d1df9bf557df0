"""Render ``bench/results/*.json`` as the Markdown summary ``bench/results/README.md``.

Every benchmark script calls ``write_report`` after saving its JSON, so the summary always
shows the latest numbers; ``python bench/report.py`` rebuilds it by hand. Only saved
results are read: nothing is measured here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).parent / "results"
README = RESULTS_DIR / "README.md"


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS_DIR / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def met(flag: bool | None) -> str:
    return "" if flag is None else ("yes" if flag else "**no**")


def machine_line(machine: dict[str, Any]) -> str:
    load = machine.get("load_average_1min_at_start"), machine.get("load_average_1min_at_end")
    return (
        f"*{machine['cpu']} ({machine['logical_cpus']} logical CPUs, "
        f"{', '.join(machine['cpu_flags']) or 'no listed matrix extensions'}); "
        f"{machine['threads']} thread{'s' if machine['threads'] != 1 else ''}; "
        f"Python {machine['python']}, torch {machine['torch']}, "
        f"transformers {machine['transformers']}; {machine['date']}; "
        f"1-minute load average {load[0]} at start, {load[1]} at end.*"
    )


def train_section(data: dict[str, Any]) -> list[str]:
    settings = data["settings"]
    probe = ", ".join(f"{p} {d['gflops']:.0f} GFLOP/s (at {d['size']})"
                      for p, d in data["matmul_peak_probe"].items())
    lines = [
        "## Training throughput",
        "",
        f"Forward + backward + {settings['optimizer']} step, batch {settings['batch_size']}, "
        f"{settings['rounds']} alternated steps per side; {settings['timing']}. "
        "Matrix-multiply peak: the fastest square multiply of a probe before the runs "
        f"({probe}), timed again in every round beside the steps; a run's share of the peak "
        "is against that in-round median (`peak`). Parity (max |logits difference| against "
        "LlamaForCausalLM with the same weights): "
        + ", ".join(f"{k} {v:.1e}" for k, v in data["parity_max_abs_logits_diff"].items())
        + ".",
        "",
    ]
    sides = ["tinyllm", "tinyllm_compiled", "transformers", "transformers_compiled"]
    rows = []
    for run in data["runs"]:
        rows.append(
            [run["size"], run["precision"], run["seq_len"]]
            + [f"{run[side]['tokens_per_s']:.0f}" for side in sides]
            + [f"{run['speedup']:.2f}x", f"{run['speedup_compiled']:.2f}x",
               f"{run['speedup_target']}x", met(run["speedup_met"]),
               f"{run['speedup_compiled_vs_compiled']:.2f}x"]
            + [f"{run['matmul_peak_gflops']:.0f}"]
            + [f"{run[side]['gflops']:.0f} ({run[side]['peak_fraction']:.0%})"
               for side in sides[:2]]
            + [met(run.get("peak_fraction_met"))]
        )
    lines += table(
        ["size", "precision", "seq", "TinyLLM tok/s", "TinyLLM compiled",
         "transformers tok/s", "transformers compiled", "speedup", "speedup compiled",
         "target", "met", "compiled vs compiled", "peak GFLOP/s", "TinyLLM GFLOP/s (of peak)",
         "TinyLLM compiled GFLOP/s (of peak)", "70% of peak met"],
        rows,
    )
    lines += [
        "",
        "`speedup`: TinyLLM's eager step over transformers' eager step; `speedup compiled`: "
        "TinyLLM with `TrainConfig(compile=True)` over the same; the target is judged on the "
        "better of the two. `compiled vs compiled`: both through `torch.compile`, like for "
        "like. Wall-clock only; the JSON also has CPU-time ratios.",
    ]
    return lines + ["", machine_line(data["machine"]), ""]


def generate_section(data: dict[str, Any]) -> list[str]:
    settings = data["settings"]
    lines = [
        "## Generation speed",
        "",
        f"Batch 1, a {settings['prompt_tokens']}-token prompt, {settings['new_tokens']} new "
        f"tokens sampled with {settings['sampling']}; {settings['rounds']} alternated runs "
        "per side, prefill included. Parity: "
        + ", ".join(f"{k} {v:.1e}" for k, v in data["parity_max_abs_logits_diff"].items())
        + ".",
        "",
    ]
    rows = []
    for run in data["runs"]:
        rows.append([
            run["size"], run["precision"],
            f"{run['tinyllm_cache']['tokens_per_s']:.0f}",
            f"{run['tinyllm_compiled']['tokens_per_s']:.0f}",
            f"{run['tinyllm_no_cache']['tokens_per_s']:.0f}",
            f"{run['transformers']['tokens_per_s']:.0f}",
            f"{run['transformers_compiled']['tokens_per_s']:.0f}",
            f"{run['speedup']:.2f}x", f"{run['speedup_compiled']:.2f}x",
            f"{run['speedup_target']}x", met(run["speedup_met"]),
            f"{run['speedup_compiled_vs_compiled']:.2f}x", f"{run['cache_speedup']:.1f}x",
            f"{run['weights_read']['tokens_per_s']:.0f}",
            f"{run['compiled_share_of_weights_read']:.0%}",
            f"{run['tinyllm_compiled']['first_run_seconds']:.0f} s",
        ])
    lines += table(
        ["size", "precision", "TinyLLM tok/s", "TinyLLM compiled step",
         "TinyLLM without KV cache", "transformers generate", "transformers compiled",
         "speedup", "speedup compiled", "target", "met", "compiled vs compiled",
         "KV cache speedup", "weights read alone", "compiled share", "first compiled run"],
        rows,
    )
    lines += [
        "",
        "`speedup`: TinyLLM's default `generate` over transformers' default `generate`; "
        "`speedup compiled`: TinyLLM with `compile_step=True` over the same; the target is "
        "judged on the better of the two. `compiled vs compiled`: TinyLLM's compiled step "
        "over transformers' static cache with `torch.compile`, like for like. "
        "`weights read alone`: every weight matrix times one row, 256 times, nothing else: "
        "the ceiling for decoding here, since each step must read every weight (memory "
        "bandwidth, for a model larger than the caches); `compiled share`: the compiled "
        "step's speed over that ceiling. `first compiled run`: the warm-up run that "
        "compiles the step, into an empty compile cache (a cold start).",
    ]
    return lines + ["", machine_line(data["machine"]), ""]


def memory_section(data: dict[str, Any]) -> list[str]:
    settings = data["settings"]
    lines = [
        "## Fine-tuning memory",
        "",
        f"Peak resident memory of a fresh process ({settings['steps']} training steps, batch "
        f"{settings['batch_size']} x {settings['seq_len']} tokens, {settings['precision']}, "
        f"model: {settings['size']}); LoRA: {settings['lora']}. Each run twice: with glibc's "
        "malloc as it comes, and with `MALLOC_MMAP_THRESHOLD_=65536` (freed tensors go back "
        "to the system at once; see `bench/bench_memory.py`).",
        "",
    ]
    rows = [
        [run["allocator"], run["mode"], "yes" if run["gradient_checkpointing"] else "no",
         f"{run['peak_rss_mb']:.0f}"]
        + (["-", "-"] if run["mode"] == "model" else
           [f"{run['trainable']:,}", f"{run['trainable_share']:.2%}"])
        for run in data["runs"]
    ]
    lines += table(["allocator", "mode", "gradient checkpointing", "peak RSS (MB)",
                    "trainable parameters", "trainable share"], rows)
    for allocator, ratios in data["by_allocator"].items():
        lines += ["", f"{allocator}:", ""]
        for label, pair in [("without gradient checkpointing", ratios),
                            ("both with gradient checkpointing", ratios["with_checkpointing"])]:
            lines.append(
                f"- LoRA peak / full peak, {label}: **{pair['lora_over_full']:.0%}** (target "
                f"at most {data['target']:.0%}: {met(pair['target_met'])}); above the process "
                f"that only holds the model: {pair['lora_over_full_above_model']:.0%}."
            )
        lines.append("- LoRA with checkpointing / full without: "
                     f"{ratios['lora_checkpointing_over_plain_full']:.0%}.")
    lines += [
        "",
        f"By model size (same batch, {data['sweep_allocator']}, no checkpointing). LoRA saves "
        "the gradients and AdamW moments of the frozen weights (12 bytes a parameter); the "
        "floor (a process holding the model) and the activations stay, so LoRA's share "
        "falls as the model grows. `floor bound`: the smallest share possible at that size, "
        "floor / (floor + gradients and moments), were the activations free.",
        "",
    ]
    rows = [
        [row["size"], f"{row['parameters']:,}"]
        + [f"{row['peak_rss_mb'][mode]:.0f}" for mode in ("model", "full", "lora")]
        + [f"{row['full_state_mb']:.0f}", f"{row['lora_saving_mb']:.0f}",
           f"{row['lora_over_full']:.0%}", f"{row['floor_bound']:.0%}", met(row["target_met"])]
        for row in data["sweep"]
    ]
    lines += table(["size (hidden x layers)", "parameters", "model (MB)", "full (MB)",
                    "LoRA (MB)", "gradients + moments (MB)", "LoRA saves (MB)", "LoRA / full",
                    "floor bound", f"at most {data['target']:.0%}"], rows)
    return lines + ["", machine_line(data["machine"]), ""]


def profile_section(data: dict[str, Any]) -> list[str]:
    categories = data["settings"]["categories"]
    lines = [
        "## Where a training step's time goes",
        "",
        "Milliseconds of a profiled training step (batch "
        f"{data['settings']['batch_size']}, {data['settings']['optimizer']}; median of "
        f"{data['settings']['repeats']} steps), by operator category; `framework` is the "
        "step's wall time not spent inside ATen operators (Python, dispatch, autograd "
        "engine, profiler overhead). See "
        "`bench/profile_train.py` for the categories.",
        "",
    ]
    rows = [
        [run["size"], run["precision"], run["side"], f"{run['ms']['total']:.0f}"]
        + [f"{run['ms'][c]:.0f}" for c in categories]
        for run in data["runs"]
    ]
    lines += table(["size", "precision", "implementation", "total", *categories], rows)
    return lines + ["", machine_line(data["machine"]), ""]


def profile_generate_section(data: dict[str, Any]) -> list[str]:
    categories = data["settings"]["categories"]
    lines = [
        "## Where generation's time goes",
        "",
        "Milliseconds per generated token of a profiled generation (a "
        f"{data['settings']['prompt_tokens']}-token prompt, "
        f"{data['settings']['new_tokens']} new tokens; median of "
        f"{data['settings']['repeats']} runs), by operator category; `framework` is the wall "
        "time not spent inside ATen operators (Python, dispatch, the decoding loop, profiler "
        "overhead). See `bench/profile_generate.py` for the categories.",
        "",
    ]
    rows = [
        [run["size"], run["side"], f"{run['ms_per_token']['total']:.2f}"]
        + [f"{run['ms_per_token'][c]:.2f}" for c in categories]
        for run in data["runs"]
    ]
    lines += table(["size", "implementation", "total", *categories], rows)
    return lines + ["", machine_line(data["machine"]), ""]


def real_model_section(data: dict[str, Any]) -> list[str]:
    settings = data["settings"]
    train, generate = settings["train"], settings["generate"]
    lines = [
        "## A real model: SmolLM2-135M-Instruct",
        "",
        f"{settings['model']}, {settings['parameters']:,} parameters, read by both sides from "
        "the same GGUF file: TinyLLM's `load_pretrained` against transformers' "
        "`from_pretrained(..., gguf_file=...)` (and PEFT for LoRA). Parity: max |logits "
        f"difference| {data['parity_max_abs_logits_diff']:.1e}. Written by "
        f"`python bench/bench_real_model.py{' --quick' if settings['quick'] else ''}`"
        f"{' (a smoke run)' if settings['quick'] else ''} in {data['wall_s']:.0f} s; "
        f"{settings['timing']}.",
        "",
    ]
    rows = []
    for run in data.get("train", []):
        rows.append([f"LoRA training step, {run['lora']}",
                     f"{run['tinyllm']['tokens_per_s']:.0f} tok/s",
                     f"{run['transformers']['tokens_per_s']:.0f} tok/s",
                     f"{run['speedup']:.2f}x", f">= {run['speedup_target']}x",
                     met(run["speedup_met"])])
    for row in data.get("train_memory", []):
        rows.append([f"training step peak RSS, {row['lora']} ({row['allocator']})",
                     f"{row['tinyllm']['step_peak_rss_mb']:.0f} MiB",
                     f"{row['transformers']['step_peak_rss_mb']:.0f} MiB",
                     f"{row['ratio']:.2f} (ours / theirs)", f"<= {row['target']:.2f}",
                     met(row["met"])])
    for run in data.get("generate", []):
        compiled = (f"; compiled step {run['tinyllm_compiled']['tokens_per_s']:.1f} tok/s, "
                    f"{run['speedup_compiled']:.2f}x" if "tinyllm_compiled" in run else "")
        rows.append([f"generation, batch 1, greedy, {run['precision']}",
                     f"{run['tinyllm']['tokens_per_s']:.1f} tok/s{compiled}",
                     f"{run['transformers']['tokens_per_s']:.1f} tok/s",
                     f"{run['speedup']:.2f}x", f">= {run['speedup_target']}x",
                     met(run["speedup_met"])])
    load = data.get("load")
    if load:
        rows.append(["load model + tokenizer (warm cache)",
                     f"{load['tinyllm_warm']['load_s_median']:.2f} s",
                     f"{load['transformers']['load_s_median']:.2f} s",
                     f"{load['speedup_warm_load']:.2f}x", f">= {load['speedup_target']}x",
                     met(load["speedup_met"])])
        rows.append(["load, cold (parse GGUF, write cache)",
                     f"{load['tinyllm_cold']['load_s_median']:.2f} s",
                     f"{load['transformers']['load_s_median']:.2f} s",
                     f"{load['speedup_cold_load']:.2f}x", "", ""])
        rows.append(["load, whole process (interpreter + imports), warm / cold",
                     f"{load['tinyllm_warm']['process_s_median']:.2f} s / "
                     f"{load['tinyllm_cold']['process_s_median']:.2f} s",
                     f"{load['transformers']['process_s_median']:.2f} s",
                     f"{load['speedup_warm_process']:.2f}x / "
                     f"{load['speedup_cold_process']:.2f}x", "", ""])
    lines += table(["measure", "TinyLLM", "transformers (+ PEFT)", "ratio", "target", "met"],
                   rows)
    lines += [
        "",
        f"Training: batch {train['batch_size']} x {train['seq_len']} random tokens, LoRA rank "
        f"{train['lora']['rank']}, alpha {train['lora']['alpha']:g}, dropout "
        f"{train['lora']['dropout']:g}; the `{train['preset']}` preset as `tinyllm train` "
        f"runs it without flags (bf16 {train['bf16']}, compile {train['compile']}), "
        f"{train['optimizer']}, gradient clipping at {train['max_grad_norm']:g}, the same "
        f"on both sides and the same initial adapters; {train['rounds']} alternated steps "
        f"after 1 warm-up. Peak RSS: a fresh worker per side, the kernel's peak counter reset "
        f"after the model is loaded, then {train['memory_steps']} steps.",
        "",
    ]
    if data.get("generate"):
        lines += [
            f"Generation: a {generate['prompt_tokens']}-token chat prompt, "
            f"{generate['new_tokens']} new tokens, prefill included. A batch-1 decode step "
            "reads every weight once, so memory bandwidth bounds it: `ceiling` = read "
            f"bandwidth (a sum over {generate['bandwidth_probe_mib']} MiB, timed in the same "
            "rounds) / bytes of weights a token reads (the tied embedding once); `weights "
            "read alone`: the decode step's matrix-vector products and nothing else.",
            "",
        ]
        rows = []
        for run in data["generate"]:
            rows.append(
                [run["precision"], f"{run['read_bandwidth_gb_s']:.1f}",
                 f"{run['weight_bytes_per_token'] / 1e6:.0f}",
                 f"{run['bandwidth_ceiling_tokens_per_s']:.1f}"]
                + [f"{run[s]['tokens_per_s']:.1f} ({run[s]['share_of_ceiling']:.0%})"
                   if s in run else "-"
                   for s in ("tinyllm", "tinyllm_compiled", "transformers", "weights_read")]
                + [f"{run['speedup_target'] * run['transformers']['share_of_ceiling']:.0%}",
                   ", ".join(f"{k} {v:.3f}" for k, v in
                             run.get("max_abs_logits_diff_vs_fp32", {}).items()) or "-"]
            )
        lines += table(["weights", "read GB/s", "MB read a token", "ceiling tok/s",
                        "TinyLLM (of ceiling)", "TinyLLM compiled", "transformers",
                        "weights read alone", "target needs (of ceiling)",
                        "max logit diff vs fp32"], rows)
        lines += [
            "",
            "`target needs`: the share of the ceiling TinyLLM must reach for the speedup "
            "target, given transformers' share; above about 90% (what the bare "
            "matrix-vector products reach) the target is out of reach whatever the Python "
            "around the kernels does. The bf16 ceiling is twice fp32's, but bf16 runs only "
            "as fast as PyTorch's CPU bf16 matrix-vector kernels (`weights read alone`).",
            "",
        ]
    profiles = [(f"training step, LoRA {run['lora']} (ms)", run["profile_ms"])
                for run in data.get("train", []) if "profile_ms" in run]
    profiles += [(f"generation, {run['precision']} (ms a token)", run["profile_ms_per_token"])
                 for run in data.get("generate", []) if "profile_ms_per_token" in run]
    for title, by_side in profiles:
        categories = list(next(iter(by_side.values())))
        lines += [f"Where the time goes, {title}, one profiled run (torch.profiler; "
                  "`framework`: wall time outside ATen operators):", ""]
        lines += table(["implementation", *categories],
                       [[side, *(f"{ms[c]:g}" for c in categories)]
                        for side, ms in by_side.items()])
        ours, theirs = by_side["tinyllm"], by_side["transformers"]
        lines += ["", f"Matrix multiplies (the same PyTorch kernels on both sides) are "
                  f"{ours['matmul'] / ours['total']:.0%} of TinyLLM's time; were all else "
                  f"free, TinyLLM would be {theirs['total'] / ours['matmul']:.2f}x "
                  "transformers (profiled times).", ""]
    return lines + [machine_line(data["machine"]), ""]


def tokenizer_section(data: dict[str, Any]) -> list[str]:
    rows = [[key, value] for key, value in data.items()]
    return ["## Tokenizer", "", *table(["measure", "value"], rows), ""]


def dpo_memory_section(data: dict[str, Any]) -> list[str]:
    settings = data["settings"]
    lines = [
        "## DPO memory",
        "",
        f"Peak resident memory of a fresh process, {settings['steps']} steps of the `Trainer` "
        f"with a LoRA adapter ({settings['lora']}), batch {settings['batch_size']} "
        f"(conversations for SFT, pairs for DPO), {settings['seq_len']} tokens a sequence, "
        f"{settings['allocator']}. The reference is the policy with its adapter off, so no "
        "second model is held; a batch of B pairs is 2B sequences, hence `sft-2x`.",
        "",
    ]
    modes = list(next(iter(data["sizes"].values()))["peak_rss_mb"])
    rows = [[size, *(f"{row['peak_rss_mb'][mode]:.0f}" for mode in modes)]
            for size, row in data["sizes"].items()]
    lines += table(["size", *(f"{mode} (MB)" for mode in modes)], rows)
    lines.append("")
    for size, row in data["sizes"].items():
        same, seqs = row["dpo_over_sft_same_batch"], row["dpo_over_sft_same_sequences"]
        lines.append(
            f"- {size}: DPO / SFT at the same batch **{same['ratio']:.2f}x** (target at most "
            f"{data['target']}x: {met(same['target_met'])}; above the model alone "
            f"{same['above_model']:.2f}x); at the same number of sequences {seqs['ratio']:.2f}x "
            f"(above the model {seqs['above_model']:.2f}x); the live reference pass costs "
            f"{row['reference_pass_mb']:.0f} MB over a precomputed one.")
    return lines + ["", machine_line(data["machine"]), ""]


def qlora_section(data: dict[str, Any]) -> list[str]:
    settings, targets = data["settings"], data["targets"]
    memory, step, layer = data["memory"], data["step"], data["layer"]
    runs = memory["runs"]
    weights = runs["qlora"]["weights"]
    lines = [
        "## QLoRA",
        "",
        f"SmolLM2-135M-Instruct, LoRA {settings['lora']} on the float32 base against the same "
        f"adapter on the base in {settings['quantization']}; batch {settings['batch_size']} x "
        f"{settings['seq_len']} random tokens, the library's `train_step`. Memory: a fresh "
        f"process per mode ({memory['allocator']}), the peak of {settings['memory_steps']} "
        "steps after the load (`clear_refs`); `-gc`: gradient checkpointing.",
        "",
    ]
    rows = [[mode, f"{run['process_mb']:.0f}", f"{run['rss_after_load_mb']:.0f}",
             f"{run['step_peak_rss_mb']:.0f}", f"{step[mode]['seconds_median']:.2f}",
             f"{step[mode]['over_lora']:.2f}x"] for mode, run in runs.items()]
    lines += table(["mode", "process (MiB)", "after load (MiB)", "step peak (MiB)",
                    "step (s)", "step time / LoRA"], rows)
    lines += [
        "",
        f"- Weights: {weights['quantized_weights']:,} quantized, {weights['float32_mb']:.0f} "
        f"MiB in float32, {weights['nf4_mb']:.0f} MiB in NF4 "
        f"({weights['bits_per_parameter']} bits a weight): NF4 saves "
        f"{memory['nf4_saves_mb']:.0f} MiB.",
        f"- LoRA's peak minus QLoRA's: **{memory['saved_mb']:.0f} MiB, "
        f"{memory['saving_share']:.0%}** of that (target at least "
        f"{targets['saving_share']:.0%}: {met(memory['saving_met'])}); QLoRA's peak is "
        f"{memory['qlora_over_lora']:.2f}x LoRA's.",
        f"- QLoRA with checkpointing over plain LoRA: **{memory['qlora_gc_over_lora']:.2f}x** "
        f"(target at most {targets['qlora_gc_over_lora']}x: {met(memory['qlora_gc_met'])}).",
        f"- QLoRA's step time: **{step['qlora']['over_lora']:.2f}x** LoRA's (target at most "
        f"{targets['step_time_ratio']}x: {met(step['met'])}).",
        "",
        "The 4-bit layer, forward and backward through the input, against "
        "`bitsandbytes.nn.Linear4bit` (its CPU backend); both multiply with the same "
        "`aten::mm` (`matmuls only`), so the difference is the dequantization:",
        "",
    ]
    rows = [[names, f"{row['in_features']} -> {row['out_features']}",
             f"{row['median_ms']['ours']:.2f}", f"{row['median_ms']['bitsandbytes']:.2f}",
             f"**{row['speedup']:.2f}x**", f"{row['median_ms']['matmuls_only']:.2f}",
             f"{row['median_ms']['ours_dequantize']:.2f}",
             f"{row['median_ms']['bitsandbytes_dequantize']:.2f}"]
            for names, row in layer["shapes"].items()]
    lines += table(["layers", "shape", "ours (ms)", "bitsandbytes (ms)", "speedup",
                    "matmuls only (ms)", "dequantize, ours (ms)",
                    "dequantize, bitsandbytes (ms)"], rows)
    lines += ["", f"Lowest speedup {layer['speedup_min']:.2f}x (target at least "
              f"{targets['layer_speedup']}x: {met(layer['met'])}). The bound: bitsandbytes "
              "dequantizes in one compiled C++ loop; ours is eager PyTorch, a gather of level "
              "pairs and a multiply by the block scales, two passes over the weight, each as "
              "fast as PyTorch's kernel for it. With the matrix products equal, the gap is "
              "the difference of the dequantizations, twice a step (forward and backward).",
              "",
              machine_line(data["machine"]), ""]
    return lines


def serve_section(data: dict[str, Any]) -> list[str]:
    settings, check, summary = data["settings"], data["correctness"], data["summary"]
    lines = [
        "## Serving",
        "",
        f"`tinyllm serve` ({settings['model']}, max batch {settings['max_batch']}) in its own "
        f"process, clients in another: {settings['client']}. Each client sends "
        f"{settings['requests_per_client']} requests one after another, each for exactly "
        f"{settings['max_tokens']} tokens ({settings['sampling']}, `ignore_eos`). The baseline "
        "is the same server with transformers' `generate` answering one request at a time.",
        "",
    ]
    theirs = {row["clients"]: row for row in data["transformers"]}
    rows = []
    for row in data["tinyllm"]:
        base = theirs.get(row["clients"])
        rows.append([row["clients"], f"{row['tokens_per_s']:.0f}",
                     f"{row['first_token_ms_p50']:.0f}", f"{row['first_token_ms_p95']:.0f}",
                     f"{base['tokens_per_s']:.0f}" if base else "",
                     f"{base['first_token_ms_p95']:.0f}" if base else ""])
    lines += table(["clients", "tokens/s", "first token p50 (ms)", "first token p95 (ms)",
                    "baseline tokens/s", "baseline p95 (ms)"], rows)
    lines += [
        "",
        f"- 16 clients over one: **{summary['scaling_16_over_1']:.2f}x** tokens/s (target at "
        f"least {summary['scaling_target']}x: {met(summary['scaling_met'])}).",
        f"- Over the one-at-a-time baseline at 16 clients: "
        f"**{summary['over_baseline_at_16']:.2f}x** (target at least "
        f"{summary['baseline_target']}x: {met(summary['baseline_met'])}); "
        f"p95 time to first token {summary['first_token_ms_p95_at_16']:.0f} ms against "
        f"{summary['baseline_first_token_ms_p95_at_16']:.0f} ms.",
        f"- {check['requests']} greedy prompts sent at once: {check['completed']} completed, "
        f"{check['same_as_alone']} with the text they get alone. Server memory "
        f"{check['rss_idle_mb']:.0f} MiB idle, {check['rss_peak_mb']:.0f} MiB at the peak, "
        f"{check['rss_after_mb']:.0f} MiB after.",
        "",
        machine_line(data["machine"]), "",
    ]
    return lines


def write_report() -> Path:
    """Write ``README.md`` from the results present and return its path."""
    lines = [
        "# Benchmark results",
        "",
        "Written by the scripts in `bench/` (`python bench/bench_train.py`, "
        "`bench_generate.py`, `bench_memory.py`, `bench_tokenizer.py`, `profile_train.py`, "
        "`profile_generate.py`, `bench_real_model.py`, `bench_dpo_memory.py`, `bench_qlora.py`, "
        "`bench_serve.py`); "
        "the JSON files next to this one hold every sample. TinyLLM is compared with Hugging Face "
        "transformers' `LlamaForCausalLM` built from the same configuration and loaded "
        "with the same weights. A speedup is transformers' time over TinyLLM's. "
        "Setup: `pip install -r requirements-bench.txt`.",
        "",
    ]
    sections = {
        "train": train_section, "profile_train": profile_section, "generate": generate_section,
        "profile_generate": profile_generate_section, "memory": memory_section,
        "tokenizer": tokenizer_section, "real_model": real_model_section,
        "dpo_memory": dpo_memory_section, "qlora": qlora_section, "serve": serve_section,
    }
    for name, render in sections.items():
        data = load(name)
        if data is not None:
            lines += render(data)
    README.write_text("\n".join(lines), encoding="utf-8")
    return README


if __name__ == "__main__":
    print(f"wrote {write_report()}")
