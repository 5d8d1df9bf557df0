"""A load test: many clients streaming from an OpenAI-compatible server at once.

What a server's users feel is two numbers: how many tokens per second it gives all of
them together (throughput), and how long each waits before the first token of its reply
appears (*time to first token*, TTFT). ``run_load`` measures both the way a real client
sees them: ``clients`` threads, each with the official ``openai`` client, each sending its
share of ``prompts`` one after another as streamed chat completions. Times are taken on
the client's side of the socket, so they include everything the server does: queueing,
the prompt's prefill, the decode steps, the HTTP and server-sent-event framing.

The Serving chapter and ``bench/bench_serve.py`` both measure with it.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class Reply:
    """One streamed reply as its client saw it."""

    prompt: str
    text: str
    completion_tokens: int  # the server's count (``stream_options.include_usage``)
    first_token_s: float  # from sending the request to the first piece of text
    total_s: float  # from sending the request to the end of the stream
    finish_reason: str | None


@dataclass
class LoadResult:
    """The replies of one load test, in the order of its prompts, and its wall time."""

    clients: int
    replies: list[Reply]
    wall_s: float

    @property
    def tokens_per_s(self) -> float:
        """Completion tokens of all replies over the wall time from first send to last end."""
        return sum(r.completion_tokens for r in self.replies) / self.wall_s

    def first_token_ms(self, percentile: float) -> float:
        """A percentile (50: the median, 95: p95) of the replies' time to first token."""
        times = sorted(r.first_token_s * 1000 for r in self.replies)
        if len(times) == 1:
            return times[0]
        return statistics.quantiles(times, n=100, method="inclusive")[round(percentile) - 1]


def stream_chat(client: Any, model: str, prompt: str, **options: Any) -> Reply:
    """One streamed chat completion of ``prompt`` (a user message), timed.

    ``options`` go to ``chat.completions.create`` as they are (``max_tokens``,
    ``temperature``, ``extra_body``...).
    """
    sent = time.perf_counter()
    first, pieces, tokens, finish = None, [], 0, None
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], stream=True,
        stream_options={"include_usage": True}, **options)
    for chunk in stream:
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
        for choice in chunk.choices:
            if choice.delta.content:
                first = first or time.perf_counter()
                pieces.append(choice.delta.content)
            finish = choice.finish_reason or finish
    end = time.perf_counter()
    return Reply(prompt, "".join(pieces), tokens, (first or end) - sent, end - sent, finish)


def run_load(client: Any, model: str, prompts: Sequence[str], clients: int,
             **options: Any) -> LoadResult:
    """Send ``prompts`` from ``clients`` concurrent threads and time every reply.

    Client ``i`` sends prompts ``i``, ``i + clients``, ``i + 2 * clients``... one after
    another, so ``clients`` requests are in flight at once until the prompts run out. An
    error in any client is raised here once all threads have finished. ``client`` is an
    ``openai.OpenAI`` (it is safe to share between threads).
    """
    if clients < 1:
        raise ValueError(f"clients must be >= 1, got {clients}")
    replies: list[Reply | None] = [None] * len(prompts)
    errors: list[BaseException] = []

    def client_loop(first: int) -> None:
        try:
            for index in range(first, len(prompts), clients):
                replies[index] = stream_chat(client, model, prompts[index], **options)
        except BaseException as err:  # handed to the caller below
            errors.append(err)

    threads = [threading.Thread(target=client_loop, args=(i,), name=f"load-client-{i}")
               for i in range(min(clients, len(prompts)))]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    if errors:
        raise errors[0]
    return LoadResult(clients, [r for r in replies if r is not None], wall)
