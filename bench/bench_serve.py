"""Serving under load: ``tinyllm serve``'s continuous batching against one request at a time.

The server runs as its own process, as a user runs it (``python -m tinyllm_lib serve``,
the shipped base with the SFT adapter, ``--max-batch 16``); this process is the clients:
``loadtest.run_load``, threads with the official ``openai`` client, every request a
streamed chat completion, on loopback only. Two things are checked, then timed:

- **Correctness under load.** Each of 32 prompts is answered greedily alone, one after
  another; then all 32 are sent at once by 32 clients. Every reply must come back, whole,
  with the same text and finish reason as alone; the server's resident memory is read from
  ``/proc`` at idle, sampled during the load, and read again after it.
- **Throughput and time to first token** against the number of concurrent clients. Every
  request asks for exactly ``MAX_TOKENS`` tokens (``ignore_eos``, vLLM's extension, as
  vLLM's own serving benchmark does), so every load does the same work per request.

The baseline is transformers' ``generate`` behind the same API: the same server code, with
an engine (``GenerateOneAtATime``) that runs each request to its end with
``LlamaForCausalLM.generate`` (its dynamic KV cache) on the same merged weights, one request
at a time, as a server without batching does.

Run ``python bench/bench_serve.py`` (``--quick`` for a smoke run); results go to
``bench/results/serve.json`` and ``bench/results/README.md``.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import Any

import openai
import torch
from common import (
    SHIPPED_BASE_DIR,
    llama_twin,
    machine_info,
    require_transformers,
    rss_mb,
    write_results,
)

from tinyllm_lib.cli import load_model
from tinyllm_lib.data import load_conversations
from tinyllm_lib.engine import Engine, Request, Running
from tinyllm_lib.loadtest import LoadResult, run_load
from tinyllm_lib.lora import merge_and_unload
from tinyllm_lib.serve import ServerProcess, Settings, serve, start_process

ROOT = Path(__file__).parents[1]
ADAPTER_DIR = ROOT / "data" / "sft_adapter"
PROMPTS_FILE = ROOT / "data" / "test.jsonl"
MODEL_NAME = "base"
MAX_BATCH = 16
MAX_TOKENS = 64
REQUESTS_PER_CLIENT = 4
CLIENT_COUNTS = (1, 2, 4, 8, 16, 32)
BASELINE_CLIENT_COUNTS = (1, 16)
CORRECTNESS_CLIENTS = 32
SCALING_TARGET = 4.0  # tokens/s at 16 clients over one client's
BASELINE_TARGET = 4.0  # tokens/s at 16 clients over the one-at-a-time baseline's
MEMORY_TOLERANCE_MB = 16.0  # "back to idle": resident memory after the load within this


# ------------------------------------------------------------------- the baseline engine


class GenerateOneAtATime(Engine):
    """An engine that answers each request with transformers' ``generate``, alone.

    Everything around the model is the ``Engine``'s: the queue, stop tokens and strings,
    lengths, the text held back, the updates; only the forward passes differ. ``prefill``
    runs the whole request: ``generate`` calls a stopping criterion after every token,
    which hands the token to ``Engine.accept`` (the client hears it at once) and stops
    generation when ``accept`` says the reply is done or the client has gone.
    """

    def __init__(self, model: Any, tokenizer: Any, max_len: int) -> None:
        super().__init__(model, tokenizer, max_batch=1, max_len=max_len)
        self.twin = llama_twin(model).eval()
        # No end-of-text id of transformers' own: Engine.accept decides when a reply ends.
        self.twin.generation_config.eos_token_id = None
        self.twin.generation_config.pad_token_id = 0

    def prefill(self, request: Request) -> None:
        transformers = require_transformers()
        sampling = request.sampling
        if sampling.max_new_tokens < 1:
            return self.end_unstarted(request, "length")
        prompt = torch.tensor([list(request.prompt_ids)])
        seq = Running(request, prompt, None, prompt[:, -1:])
        self.running.append(seq)
        engine, finished = self, []

        class Accept(transformers.StoppingCriteria):
            def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> Any:
                seq.tokens, seq.last = input_ids, input_ids[:, -1:]
                if engine.accept(seq):
                    finished.append(True)
                done = bool(finished) or request.cancelled.is_set()
                return torch.full((input_ids.shape[0],), done, dtype=torch.bool)

        options: dict[str, Any] = {"do_sample": False}
        if not sampling.greedy:
            options = {"do_sample": True, "temperature": sampling.temperature,
                       "top_k": sampling.top_k or None, "top_p": sampling.top_p}
        self.twin.generate(prompt, max_new_tokens=sampling.max_new_tokens,
                           stopping_criteria=transformers.StoppingCriteriaList([Accept()]),
                           repetition_penalty=sampling.repetition_penalty, **options)
        if not finished:
            self.tell(seq, "", "cancelled")
        self.release([0])


def serve_transformers(host: str, port: int) -> None:
    """The baseline server (run in its own process by ``--serve-transformers``)."""
    require_transformers()
    model, tokenizer = load_model(SHIPPED_BASE_DIR, ADAPTER_DIR)
    merge_and_unload(model)
    engine = GenerateOneAtATime(model, tokenizer, max_len=model.config.max_seq_len)
    serve(engine, Settings(MODEL_NAME), host, port)


# --------------------------------------------------------------------- the server process


def start_server(kind: str) -> ServerProcess:
    """``tinyllm serve`` (``kind`` "tinyllm") or the baseline ("transformers") as a process."""
    if kind == "tinyllm":
        return start_process(["--model", str(SHIPPED_BASE_DIR), "--adapter", str(ADAPTER_DIR),
                              "--max-batch", str(MAX_BATCH)])
    return start_process(command=[sys.executable, __file__, "--serve-transformers"])


class PeakMemory:
    """Sample a process's resident memory every 20 ms in a thread, keeping the largest."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, rss_mb(pid=pid), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_mb(pid=self.pid))

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# -------------------------------------------------------------------------- measurements


def chat_prompts(count: int) -> list[str]:
    """The first user message of the first ``count`` test conversations."""
    conversations = load_conversations(PROMPTS_FILE)
    if len(conversations) < count:
        raise SystemExit(f"{PROMPTS_FILE} has {len(conversations)} conversations; "
                         f"{count} are needed")
    return [conversation[0]["content"] for conversation in conversations[:count]]


def load_summary(result: LoadResult) -> dict[str, Any]:
    return {"clients": result.clients, "requests": len(result.replies),
            "completion_tokens": sum(r.completion_tokens for r in result.replies),
            "wall_s": round(result.wall_s, 3), "tokens_per_s": round(result.tokens_per_s, 1),
            "first_token_ms_p50": round(result.first_token_ms(50), 1),
            "first_token_ms_p95": round(result.first_token_ms(95), 1)}


def correctness(client: openai.OpenAI, pid: int, prompts: list[str]) -> dict[str, Any]:
    """Alone, then all at once: the same replies, nothing dropped, memory back to idle."""
    alone = [run_load(client, MODEL_NAME, [p], 1, temperature=0, max_tokens=MAX_TOKENS)
             .replies[0] for p in prompts]
    idle = rss_mb(pid=pid)
    with PeakMemory(pid) as memory:
        together = run_load(client, MODEL_NAME, prompts, len(prompts), temperature=0,
                            max_tokens=MAX_TOKENS)
    time.sleep(1.0)
    after = rss_mb(pid=pid)
    same = sum(a.text == b.text and a.finish_reason == b.finish_reason
               for a, b in zip(alone, together.replies, strict=True))
    return {"requests": len(prompts), "completed": len(together.replies),
            "same_as_alone": same, "rss_idle_mb": round(idle, 1),
            "rss_peak_mb": round(memory.peak, 1), "rss_after_mb": round(after, 1),
            "example": {"prompt": prompts[0], "reply": alone[0].text}}


def sweep(client: openai.OpenAI, prompts: list[str], counts: tuple[int, ...],
          requests_per_client: int) -> list[dict[str, Any]]:
    """Throughput and time to first token at each number of concurrent clients."""
    rows = []
    for clients in counts:
        load = [prompts[i % len(prompts)] for i in range(clients * requests_per_client)]
        result = run_load(client, MODEL_NAME, load, clients, temperature=0,
                          max_tokens=MAX_TOKENS, extra_body={"ignore_eos": True})
        if any(r.completion_tokens != MAX_TOKENS for r in result.replies):
            raise SystemExit(f"a reply at {clients} clients did not have {MAX_TOKENS} tokens")
        rows.append(load_summary(result))
        print(f"  {clients:>2} clients: {rows[-1]['tokens_per_s']:>7.1f} tokens/s, first "
              f"token p50 {rows[-1]['first_token_ms_p50']:.0f} ms, "
              f"p95 {rows[-1]['first_token_ms_p95']:.0f} ms", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: fewer clients and requests; results not saved")
    parser.add_argument("--serve-transformers", action="store_true",
                        help="(internal) run the baseline server on --host and --port")
    parser.add_argument("--host", default="127.0.0.1", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=8000, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_transformers:
        return serve_transformers(args.host, args.port)
    require_transformers()
    counts = (1, 16) if args.quick else CLIENT_COUNTS
    per_client = 1 if args.quick else REQUESTS_PER_CLIENT
    prompts = chat_prompts(CORRECTNESS_CLIENTS)
    results: dict[str, Any] = {
        "benchmark": "serve", "machine": machine_info(),
        "settings": {"model": "data/base + data/sft_adapter", "max_batch": MAX_BATCH,
                     "max_tokens": MAX_TOKENS, "requests_per_client": per_client,
                     "sampling": "greedy", "client": f"openai {openai.__version__}, "
                     "streamed chat completions, one thread per client, loopback",
                     "transport": "server in its own process"}}
    # max_retries=0: a refused or failed request is an error here, not a silent retry.
    with start_server("tinyllm") as server:
        client = openai.OpenAI(base_url=server.url, api_key="none", max_retries=0,
                               timeout=120)
        print("correctness: 32 prompts alone, then at once", flush=True)
        results["correctness"] = correctness(client, server.process.pid, prompts)
        print(f"  {results['correctness']}", flush=True)
        print("tinyllm serve (continuous batching):", flush=True)
        results["tinyllm"] = sweep(client, prompts, counts, per_client)
    with start_server("transformers") as server:
        client = openai.OpenAI(base_url=server.url, api_key="none", max_retries=0,
                               timeout=600)
        print("transformers generate, one request at a time:", flush=True)
        results["transformers"] = sweep(client, prompts, BASELINE_CLIENT_COUNTS, per_client)
    ours = {row["clients"]: row for row in results["tinyllm"]}
    theirs = {row["clients"]: row for row in results["transformers"]}
    check = results["correctness"]
    results["summary"] = {
        "scaling_16_over_1": round(ours[16]["tokens_per_s"] / ours[1]["tokens_per_s"], 2),
        "scaling_target": SCALING_TARGET,
        "over_baseline_at_16": round(ours[16]["tokens_per_s"]
                                     / theirs[16]["tokens_per_s"], 2),
        "baseline_target": BASELINE_TARGET,
        "first_token_ms_p95_at_16": ours[16]["first_token_ms_p95"],
        "baseline_first_token_ms_p95_at_16": theirs[16]["first_token_ms_p95"],
        "all_completed_as_alone": check["completed"] == check["same_as_alone"]
        == check["requests"],
        "memory_back_to_idle": check["rss_after_mb"] - check["rss_idle_mb"]
        <= MEMORY_TOLERANCE_MB,
    }
    summary = results["summary"]
    summary["scaling_met"] = summary["scaling_16_over_1"] >= SCALING_TARGET
    summary["baseline_met"] = summary["over_baseline_at_16"] >= BASELINE_TARGET
    print(summary)
    if not args.quick:
        write_results("serve", results)


if __name__ == "__main__":
    main()
