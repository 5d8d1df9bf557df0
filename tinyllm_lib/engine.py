"""A batching engine: many sequences decoded at once, with continuous batching.

``sampling.generate`` decodes one sequence: each step is one forward pass for one token,
and on a GPU (or even a CPU's vector units) that pass leaves most of the hardware idle,
because its cost is reading the weights, not the arithmetic. A server answering many
clients can instead run *one* forward pass per step over the next token of *every*
running sequence: the weights are read once for all of them.

The sequences have different lengths, so each has its own row of one shared
``KVCache`` and its own position (``KVCache.write`` and ``cached_attention`` take
positions ``[batch, seq]``, one row each). A row's attention always runs over the whole
buffer, with its empty or stale slots at probability exactly 0, and every decode step has
the same shape (``max_batch`` rows, used or not: see ``Engine``), so the rows batched
with a sequence cannot change its logits by a single bit: a greedy or seeded request gives
the same tokens alone or among fifteen others (``tests/test_serve.py`` checks it).

*Continuous batching* (Yu et al. 2022, "Orca") lets a request join at the next step and
leave as soon as it is done, instead of waiting for a whole batch to start and finish
together: a new request is *prefilled* alone (one pass over its prompt, into its row),
then joins the batched decode steps; a finished or cancelled one frees its row at once, so
a long request does not hold up short ones. The rows in use are kept first (a leaving
row's place is taken by the last one), so a step runs over ``cache.rows(0, n)``.

One background thread owns the model and runs the loop; other threads (the HTTP server's)
talk to it only through a thread-safe queue of submissions and each request's ``emit``
callback and ``cancel`` flag.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .model import KVCache, TinyLLM
from .sampling import SamplingConfig, as_float, choose_next
from .tokenizer import Tokenizer

log = logging.getLogger("tinyllm.engine")
FINISH_REASONS = ("stop", "length", "cancelled", "error")


class EngineBusy(RuntimeError):
    """The queue of waiting requests is full: try again later (HTTP 503)."""


@dataclass
class Update:
    """What a request hears after a step: the new text, and how it ended once it has.

    ``finish_reason`` is ``None`` while it runs, then ``"stop"`` (a stop token or stop
    string), ``"length"`` (``max_new_tokens`` or the context is full), ``"cancelled"`` or
    ``"error"`` (the engine failed; it logs why and goes on with new requests).
    ``completion_tokens`` counts the tokens generated so far, a stop token excluded.
    """

    text: str
    finish_reason: str | None = None
    completion_tokens: int = 0


@dataclass
class Request:
    """One sequence to continue: its prompt, how to sample, when to stop, whom to tell.

    ``sampling.max_new_tokens`` bounds the reply and ``sampling.seed`` seeds this request's
    own ``torch.Generator``, so its draws do not depend on the requests beside it.
    ``stop`` strings end the reply where they first appear; they are not part of it. Text
    that could be the start of a stop string is held back until it is known not to be.
    ``ignore_eos`` decodes on past the tokenizer's stop tokens (a load test's replies of a
    known length).
    ``emit`` is called from the engine's thread with each ``Update``.
    """

    prompt_ids: Sequence[int]
    sampling: SamplingConfig
    emit: Callable[[Update], object]
    stop: Sequence[str] = ()
    ignore_eos: bool = False
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        """Stop this request (its client went away): its row is freed at the next step."""
        self.cancelled.set()


@dataclass
class Running:
    """A request in the batch: its row's state between steps."""

    request: Request
    tokens: torch.Tensor  # [1, seq]: prompt and reply so far, for the repetition penalty
    generator: torch.Generator | None
    last: torch.Tensor  # [1, 1]: the newest token, not yet in the cache
    generated: list[int] = field(default_factory=list)
    sent: int = 0  # characters of the reply's text already emitted

    @property
    def length(self) -> int:
        """Tokens in the cache: all but the newest."""
        return self.tokens.shape[1] - 1


def held_back(text: str, stops: Sequence[str]) -> int:
    """How many characters at the end of ``text`` may be the start of a stop string."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


class Engine:
    """Decode many requests at once, ``max_batch`` at a time, ``max_queue`` more waiting.

    ``submit`` hands a request over (``EngineBusy`` when the queue is full); ``start`` runs
    the loop in a background thread, ``stop`` ends it. ``max_len`` is the cache's slots
    per row, by default the model's context.

    ``batch_invariant`` (the default) runs every decode step over all ``max_batch`` rows,
    used or not, so that a request's logits are bit for bit the same whatever runs beside
    it, and a seeded or greedy request is reproducible under any load. The price is paid
    at low load: on one CPU thread a step of the shipped base takes 2.2 ms for one row
    and 7.2 ms for sixteen. ``False`` runs only the rows in use: faster when few
    are, and then logits can differ in the last bits (a token flips only at a near tie).
    """

    def __init__(
        self, model: TinyLLM, tokenizer: Tokenizer, max_batch: int = 16,
        max_queue: int = 64, max_len: int | None = None, batch_invariant: bool = True,
    ) -> None:
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_batch, self.batch_invariant = max_batch, batch_invariant
        self.context = min(max_len or model.config.max_seq_len, model.config.max_seq_len)
        self.waiting: queue.Queue[Request] = queue.Queue(maxsize=max_queue)
        self.running: list[Running] = []
        self.stop_ids = frozenset(tokenizer.stop_ids)
        parameter = next(model.parameters())
        self.cache = KVCache.empty(model.config, max_batch, self.context, parameter.device,
                                   parameter.dtype)
        # Requests ended, by finish reason; every key there from the start, so that another
        # thread can copy the counts while this one adds to them.
        self.finished: Counter[str] = Counter(dict.fromkeys(FINISH_REASONS, 0))
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # ------------------------------------------------------------------ the outside

    def submit(self, request: Request) -> None:
        """Queue ``request``; it joins the batch at the next step with a free row."""
        if not request.prompt_ids:
            raise ValueError("the prompt is empty; the model needs at least one token")
        if len(request.prompt_ids) >= self.context:
            raise ValueError(f"the prompt has {len(request.prompt_ids)} tokens, but the "
                             f"context holds {self.context} with the reply")
        try:
            self.waiting.put_nowait(request)
        except queue.Full:
            raise EngineBusy(f"{self.waiting.maxsize} requests are already waiting") from None

    def start(self) -> Engine:
        self._stopping.clear()
        self._thread = threading.Thread(target=self.run, name="tinyllm-engine", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    # ------------------------------------------------------------------ the loop

    def run(self) -> None:
        """Step until ``stop``: admit waiting requests while rows are free, then decode."""
        with torch.inference_mode():
            while not self._stopping.is_set():
                try:
                    self.admit(block=not self.running)
                    if self.running:
                        self.step()
                except Exception:  # a bug must not hang every client: end their requests
                    log.exception("engine step failed; ending %d requests", len(self.running))
                    for seq in self.running:
                        self.tell(seq, "", "error")
                    self.running.clear()

    def admit(self, block: bool) -> None:
        """Prefill waiting requests into free rows; with nothing running, wait a little."""
        while len(self.running) < self.max_batch:
            try:
                request = self.waiting.get(timeout=0.05) if block else self.waiting.get_nowait()
            except queue.Empty:
                return
            block = False
            if request.cancelled.is_set():
                self.end_unstarted(request, "cancelled")
            else:
                self.prefill(request)

    def end_unstarted(self, request: Request, finish_reason: str) -> None:
        """Tell a request that never got a row that it is over."""
        self.finished[finish_reason] += 1
        try:
            request.emit(Update("", finish_reason, 0))
        except Exception:  # the receiving side is gone
            pass

    def prefill(self, request: Request) -> None:
        """Read the prompt into the next free row and choose the reply's first token."""
        if request.sampling.max_new_tokens < 1:
            return self.end_unstarted(request, "length")
        row = len(self.running)
        prompt = torch.tensor([list(request.prompt_ids)], device=self.cache.keys[0].device)
        sampling = request.sampling
        generator = None
        if sampling.seed is not None and not sampling.greedy:
            generator = torch.Generator(device=prompt.device).manual_seed(sampling.seed)
        logits = as_float(self.model(prompt, self.cache.rows(row, row + 1))[:, -1])
        token = choose_next(logits, prompt, sampling, generator)
        seq = Running(request, torch.cat([prompt, token], dim=1), generator, token)
        self.running.append(seq)
        if self.accept(seq):
            self.release([row])

    def step(self) -> None:
        """One batched forward pass over every running sequence's newest token."""
        finished = [i for i, seq in enumerate(self.running) if seq.request.cancelled.is_set()]
        for i in finished:
            self.tell(self.running[i], "", "cancelled")
        self.release(finished)
        if not self.running:
            return
        # Batch-invariant: run every step over all max_batch rows, the free ones on a
        # throwaway token at their slot 0 (a prefill overwrites it). A matrix multiply's
        # kernel is chosen by its shape, so one of 4 rows rounds a row differently than one
        # of 16 would; with the shape fixed, a row's result depends on its own data alone.
        rows = self.max_batch if self.batch_invariant else len(self.running)
        free = rows - len(self.running)
        last = torch.cat([seq.last for seq in self.running])  # [n, 1]
        positions = torch.tensor([[seq.length] for seq in self.running], device=last.device)
        last = torch.cat([last, last.new_zeros(free, 1)])
        positions = torch.cat([positions, positions.new_zeros(free, 1)])
        logits = as_float(self.model(last, self.cache.rows(0, rows), positions)[:, -1])
        done = []
        for i, seq in enumerate(self.running):
            sampling = seq.request.sampling
            token = choose_next(logits[i : i + 1], seq.tokens, sampling, seq.generator)
            seq.tokens, seq.last = torch.cat([seq.tokens, token], dim=1), token
            if self.accept(seq):
                done.append(i)
        self.release(done)

    def accept(self, seq: Running) -> bool:
        """Take the newest token (``seq.last``) into the reply; tell the client; finished?"""
        token = int(seq.last)
        if token in self.stop_ids and not seq.request.ignore_eos:
            return self.tell(seq, self.unsent(seq, final=True), "stop")
        seq.generated.append(token)
        text = self.tokenizer.decode(seq.generated)
        stops = [s for s in seq.request.stop if s]
        # Emitted text never ends in the start of a stop string, so a stop string found
        # now lies in the text not yet emitted.
        hits = [i for i in (text.find(s) for s in stops) if i >= 0]
        if hits:
            return self.tell(seq, text[seq.sent : min(hits)], "stop")
        full = (len(seq.generated) >= seq.request.sampling.max_new_tokens
                or seq.length + 1 >= self.context)
        if full:
            return self.tell(seq, self.unsent(seq, final=True), "length")
        self.tell(seq, self.unsent(seq, final=False), None)
        return False

    def unsent(self, seq: Running, final: bool) -> str:
        """The reply's text not yet emitted; unless ``final``, minus an unfinished character
        (a byte-level token can end inside one) or a possible start of a stop string."""
        text = self.tokenizer.decode(seq.generated)
        end = len(text)
        if not final:
            end -= len(text) - len(text.rstrip("\ufffd"))
            end -= held_back(text[:end], seq.request.stop)
        piece = text[seq.sent : max(end, seq.sent)]
        seq.sent += len(piece)
        return piece

    def tell(self, seq: Running, text: str, finish_reason: str | None) -> bool:
        """Emit an update; a client that cannot be told any more is cancelled."""
        if finish_reason is not None:
            self.finished[finish_reason] += 1
        if text or finish_reason:
            try:
                seq.request.emit(Update(text, finish_reason, len(seq.generated)))
            except Exception:  # the receiving side is gone (e.g. its event loop closed)
                seq.request.cancel()
        return finish_reason is not None

    def release(self, rows: list[int]) -> None:
        """Free ``rows``: the last running sequence moves into each freed row."""
        for row in sorted(rows, reverse=True):
            last = len(self.running) - 1
            if row != last:
                for buffer in (*self.cache.keys, *self.cache.values):
                    buffer[row, :, : self.running[last].length] = (
                        buffer[last, :, : self.running[last].length])
                self.running[row] = self.running[last]
            self.running.pop()


def collect(engine: Engine, prompt_ids: Sequence[int], sampling: SamplingConfig,
            stop: Sequence[str] = ()) -> tuple[Request, queue.Queue[Update]]:
    """Submit a request whose updates land in a thread-safe queue (for scripts and tests)."""
    updates: queue.Queue[Update] = queue.Queue()
    request = Request(prompt_ids, sampling, updates.put, stop)
    engine.submit(request)
    return request, updates


def wait(updates: queue.Queue[Update], timeout: float = 60.0) -> tuple[str, Update]:
    """The whole text of a ``collect``-ed request and its last update, once it finishes."""
    pieces = []
    while True:
        update = updates.get(timeout=timeout)
        pieces.append(update.text)
        if update.finish_reason is not None:
            return "".join(pieces), update
