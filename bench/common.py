"""What every benchmark here shares: the model sizes, the transformers twin, timing, results.

Each benchmark races TinyLLM against the implementation a reader would otherwise use,
Hugging Face transformers' ``LlamaForCausalLM``, built from the same configuration and
loaded with the same weights. A parity check (same logits to ``PARITY_TOLERANCE``) runs
before anything is timed, so the race is between two implementations of the same
arithmetic, not between two different models.

The machine is shared, so timings are noisy. Contenders are timed in alternation, the
order reversed every other round (ours, theirs, theirs, ours, ...): a burst of load from
elsewhere then slows both sides alike. Speed-ups are medians of the per-round ratios, which
cancels slow drifts in the load as well. On a busy machine, ``--threads 1`` gives far
steadier numbers: with one thread per core, every parallel operator waits for its slowest
thread, and a thread that shares its core with another process is slow.

``transformers`` is an optional dependency for benchmarks only:
``pip install -r requirements-bench.txt``.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from report import write_report
from torch import nn

from tinyllm_lib.config import PRESETS, ModelConfig, config_to_dict
from tinyllm_lib.formats.hf_llama import CONFIG_FILE, config_to_llama, read_llama_config
from tinyllm_lib.model import TinyLLM

RESULTS_DIR = Path(__file__).parent / "results"
SHIPPED_BASE_DIR = Path(__file__).parents[1] / "data" / "base"
PARITY_TOLERANCE = 1e-4


def base_config() -> ModelConfig:
    """The shipped base model's shape, read from ``data/base/config.json`` when it exists."""
    if not (SHIPPED_BASE_DIR / CONFIG_FILE).exists():
        return PRESETS["base"]  # the shape `pretrain` gives it
    return read_llama_config(SHIPPED_BASE_DIR)


def model_sizes() -> dict[str, ModelConfig]:
    """The two sizes every benchmark runs: the seed project's default and the shipped base."""
    return {"seed": ModelConfig(), "base": base_config()}


def require_transformers() -> Any:
    """Import transformers, or stop with the command that installs it."""
    try:
        import transformers
    except ImportError:
        raise SystemExit(
            "these benchmarks compare against Hugging Face transformers, which is not "
            "installed: pip install -r requirements-bench.txt"
        ) from None
    transformers.logging.set_verbosity_error()  # its generation-config notices are noise here
    return transformers


def llama_twin(model: TinyLLM) -> nn.Module:
    """transformers' ``LlamaForCausalLM`` with ``model``'s configuration and weights.

    It uses transformers' ``sdpa`` attention, the fastest it has on a CPU, which calls the
    same fused PyTorch kernel TinyLLM does.
    """
    transformers = require_transformers()
    fields = {k: v for k, v in config_to_llama(model.config).items()
              if k not in ("architectures", "model_type")}
    twin = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(**fields, attn_implementation="sdpa")
    )
    twin.load_state_dict(model.state_dict())
    return twin.train(model.training)


def model_pair(config: ModelConfig, seed: int = 0) -> tuple[TinyLLM, nn.Module]:
    """A seeded TinyLLM and its transformers twin with identical weights."""
    torch.manual_seed(seed)
    ours = TinyLLM(config)
    return ours, llama_twin(ours)


@torch.no_grad()
def logits_difference(ours: TinyLLM, theirs: nn.Module, seq_len: int = 64) -> float:
    """Largest absolute difference of the two models' float32 logits on random tokens."""
    config = ours.config
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, config.vocab_size, (2, min(seq_len, config.max_seq_len)),
                        generator=generator)
    was_training = ours.training, theirs.training
    ours.eval()
    theirs.eval()
    try:
        return float((ours(ids) - theirs(input_ids=ids).logits).abs().max())
    finally:
        ours.train(was_training[0])
        theirs.train(was_training[1])


def check_parity(
    ours: TinyLLM, theirs: nn.Module, name: str, tolerance: float = PARITY_TOLERANCE
) -> float:
    """The logits difference, or an error if the two models do not compute the same thing.

    ``tolerance`` defaults to that of two models built here with the same float32 weights;
    a model read from a file by two different readers (SmolLM2's GGUF) gets a looser one.
    """
    diff = logits_difference(ours, theirs)
    print(f"parity {name}: max |logits difference| = {diff:.2e}")
    if not diff <= tolerance:
        raise SystemExit(
            f"parity check failed for {name}: TinyLLM and transformers logits differ by "
            f"{diff:.2e} > {tolerance:g}; the timings would compare different work"
        )
    return diff


@dataclass
class Timings:
    """Seconds per timed run: wall clock, and CPU time used by this process.

    On an idle machine with one thread the two agree. Under load from other processes,
    wall time includes the time this process waited for a core and CPU time does not,
    so the CPU-time ratio is the steadier estimate of the speedup on a quiet machine.
    With several threads, CPU time also counts the threads' time spent waiting for each
    other, so it is no longer a measure of speed, only a second opinion on the ratio.
    """

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    first_run: float | None = None  # wall seconds of the first warm-up run (compiling, if any)


def alternate(
    contenders: dict[str, Callable[[], object]], rounds: int, warmup: int = 1
) -> dict[str, Timings]:
    """Time each contender once per round, in alternation.

    Every contender first runs ``warmup`` untimed times (allocator, caches, lazy
    initialisation). Each round then runs each contender once, the order reversed
    every other round, so neither side always follows the other.
    """
    timings = {name: Timings() for name in contenders}
    for index in range(warmup):
        for name, run in contenders.items():
            wall = time.perf_counter()
            run()
            if index == 0:
                timings[name].first_run = time.perf_counter() - wall
    names = list(contenders)
    for index in range(rounds):
        for name in names if index % 2 == 0 else reversed(names):
            wall, cpu = time.perf_counter(), time.process_time()
            contenders[name]()
            timings[name].wall.append(time.perf_counter() - wall)
            timings[name].cpu.append(time.process_time() - cpu)
    return timings


def paired_speedup(slower: list[float], faster: list[float]) -> float:
    """Median over rounds of ``slower / faster``: how many times faster ``faster`` is."""
    return statistics.median(s / f for s, f in zip(slower, faster, strict=True))


def speedups(timings: dict[str, Timings], ours: str) -> dict[str, float]:
    """The ratios both speed benchmarks report, from sides named as they name them.

    ``speedup``: transformers' eager time over TinyLLM's eager side ``ours``;
    ``speedup_compiled``: over ``tinyllm_compiled``; each also in CPU time. And
    ``speedup_compiled_vs_compiled``: ``transformers_compiled`` over ``tinyllm_compiled``.
    """
    theirs = timings["transformers"]
    result = {}
    for side, key in [(ours, "speedup"), ("tinyllm_compiled", "speedup_compiled")]:
        result[key] = round(paired_speedup(theirs.wall, timings[side].wall), 3)
        result[f"{key}_cpu_time"] = round(paired_speedup(theirs.cpu, timings[side].cpu), 3)
    result["speedup_compiled_vs_compiled"] = round(paired_speedup(
        timings["transformers_compiled"].wall, timings["tinyllm_compiled"].wall), 3)
    return result


def set_threads(threads: int | None) -> int:
    """Use ``threads`` intra-op threads (default: PyTorch's choice, one per core)."""
    if threads is not None:
        if threads < 1:
            raise SystemExit(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what platform knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The matrix-relevant instruction sets this CPU reports (bf16 speed depends on them)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return []
    flags: set[str] = set()
    for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            break
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return [flag for flag in wanted if flag in flags]


def machine_info() -> dict[str, Any]:
    """Facts about this machine and software that the numbers depend on."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        info["transformers"] = None
    if hasattr(os, "getloadavg"):
        info["load_average_1min_at_start"] = round(os.getloadavg()[0], 2)
    return info


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def rss_mb(field: str = "VmRSS", pid: int | str = "self") -> float:
    """A process's ``VmRSS`` (resident now) or ``VmHWM`` (peak since start or last reset),
    in MiB, from ``/proc/PID/status`` (this process's by default)."""
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**10
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


def config_summary(config: ModelConfig) -> dict[str, Any]:
    """The model configuration as saved with the results, with derived sizes resolved."""
    return {**config_to_dict(config), "kv_heads": config.kv_heads, "mlp_size": config.mlp_size}


def write_results(name: str, results: dict[str, Any]) -> Path:
    """Save ``results`` as ``bench/results/<name>.json`` and refresh the Markdown summary."""
    if hasattr(os, "getloadavg"):
        results["machine"]["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {path}")
    print(f"wrote {write_report()}")
    return path
