"""Sampling: from next-token logits to a stream of generated token ids.

A language model gives, for the next position, one score (logit) per vocabulary entry;
``softmax`` turns them into a probability distribution. *Decoding* chooses a token from it,
appends the token to the input and repeats. Always taking the most probable token
(greedy decoding) is deterministic but tends to loop; sampling from the raw distribution
is varied but now and then picks an absurd token from the long tail. The *logits
processors* below reshape the distribution between those extremes, and are applied in
this order, as Hugging Face's ``generate`` applies its processors of the same names:

1. ``apply_repetition_penalty``: make tokens already in the text less likely;
2. ``apply_temperature``: sharpen or flatten the whole distribution;
3. ``top_k_filter``: keep only the k most likely tokens;
4. ``top_p_filter``: keep only the most likely tokens that together hold probability p.

Each is a pure function on logits ``[batch, vocab]`` (or ``[vocab]``) that returns new
logits, with removed tokens at ``-inf`` so that ``softmax`` gives them probability 0.
``process_logits`` applies them in that order over the whole vocabulary (what the
playground draws); ``choose_next`` draws the token from the same processors kept to the
few candidates top-k leaves (``sampling_candidates``), which gives the same distribution
without sorting thousands of tokens at every step. The draw is an exponential race
(``pick_token``) with the randomness drawn beforehand, so that a compiled decode step can
hold the sampling as well as the model (``decode_step``).

``generate`` runs the decoding loop with a KV cache: one forward pass over the prompt
(*prefill*), then one single-token pass per new token (*decode* steps), each reusing the
keys and values cached for all earlier tokens.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .chat import Message, encode_chat
from .config import check, setting
from .model import KVCache
from .tokenizer import Tokenizer

# --------------------------------------------------------------------------- processors


def apply_repetition_penalty(
    logits: torch.Tensor, prev_ids: torch.Tensor, penalty: float
) -> torch.Tensor:
    """Make every token that occurs in ``prev_ids`` less likely (``penalty > 1``).

    A seen token's logit is divided by ``penalty`` when positive and multiplied by it when
    negative, so either way it moves towards "less likely"; ``penalty < 1`` rewards
    repetition instead. A token is penalised once however often it occurred (Keskar et al.
    2019, CTRL). Small models love to repeat themselves, and this is the oldest remedy.

    ``prev_ids`` is ``[batch, seq]`` for ``[batch, vocab]`` logits (``[seq]`` for
    ``[vocab]``) and holds the whole text so far, prompt included, as Hugging Face does.
    Ids outside the logits' vocabulary are ignored: the model cannot produce them anyway.
    """
    if penalty <= 0:
        raise ValueError(f"repetition penalty must be > 0, got {penalty}")
    if prev_ids.dim() != logits.dim():
        raise ValueError(
            f"prev_ids must have as many dimensions as logits ({logits.dim()}), "
            f"got shape {tuple(prev_ids.shape)}"
        )
    vocab_size = logits.shape[-1]
    # One extra column collects out-of-vocabulary ids, then is cut off.
    seen = torch.zeros((*logits.shape[:-1], vocab_size + 1), dtype=torch.bool,
                       device=logits.device)
    seen.scatter_(-1, prev_ids.clamp(max=vocab_size), True)
    penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen[..., :vocab_size], penalised, logits)


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Divide the logits by ``temperature``: below 1 sharpens, above 1 flattens.

    ``softmax(z / T)``: as T falls towards 0 the largest logit takes all the probability
    (greedy decoding); at T = 1 the model's own distribution is unchanged; as T grows the
    distribution tends to uniform. The ranking of tokens never changes, only how far
    apart their probabilities are. T = 0 itself is not a division: ``generate`` treats it
    as greedy decoding, so here it is an error.
    """
    if temperature <= 0:
        raise ValueError(
            f"temperature must be > 0, got {temperature} "
            "(for greedy decoding, give generate temperature=0)"
        )
    return logits / temperature


def top_k_candidates(
    logits: torch.Tensor, k: int, keep_ties: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` highest logits and their token ids, ``[batch, n]`` each, in vocabulary
    order (so that a later sort breaks ties as it would on the whole vocabulary).

    Every token tied with the k-th highest logit is kept too, so ``n`` can exceed ``k``
    (in a batch, a row with fewer ties pads with ``-inf``); ``k`` larger than the
    vocabulary keeps everything. ``keep_ties=False`` keeps exactly ``k``, ties broken as
    ``torch.topk`` breaks them: a shape known in advance, which a compiled graph needs.
    """
    if k < 1:
        raise ValueError(f"top_k must be >= 1, got {k}")
    values, ids = logits.topk(min(k, logits.shape[-1]), dim=-1)
    if keep_ties:
        kth_highest = values[..., -1:]
        with_ties = int((logits >= kth_highest).sum(dim=-1).max())
        if with_ties > values.shape[-1]:
            values, ids = logits.topk(with_ties, dim=-1)
            values = values.masked_fill(values < kth_highest, float("-inf"))
    ids, order = ids.sort(dim=-1)
    return values.gather(-1, order), ids


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` highest logits and set the rest to ``-inf``.

    Cutting off the long tail of unlikely tokens removes the rare absurd pick while
    leaving the choice among plausible ones random. A fixed k is crude, though: after
    "The capital of France is" one token deserves all the mass, after "I like" hundreds
    do. Every token tied with the k-th highest logit is kept, so ties can keep more than
    k; ``k`` larger than the vocabulary keeps everything.
    """
    values, ids = top_k_candidates(logits, k)
    return torch.full_like(logits, float("-inf")).scatter(-1, ids, values)


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus sampling: keep the fewest most likely tokens whose probabilities sum to p.

    Unlike top-k, the number of tokens kept adapts to the model's confidence: one token
    when it is sure, many when it is not (Holtzman et al. 2019). The sum is taken after
    the processors before it, so the temperature changes which tokens survive.

    The computation, like Hugging Face's, starts from the *least* likely end: sort
    ascending, take the cumulative probability, and remove each token whose cumulative
    probability (itself plus everything less likely) is at most ``1 - p``. A token is
    therefore kept exactly when the tokens sorted above it hold less than ``p``, so a set
    that reaches ``p`` exactly is enough. Tied tokens are cut in vocabulary order (the
    sort is stable), and the most likely token is always kept (``min_tokens_to_keep=1``).
    """
    if not 0 <= p <= 1:
        raise ValueError(f"top_p must be in [0, 1], got {p}")
    sorted_logits, order = torch.sort(logits, descending=False, stable=True)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cumulative <= 1 - p
    remove_sorted[..., -1:] = False
    remove = remove_sorted.scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


# ------------------------------------------------------------------------ configuration


@dataclass
class SamplingConfig:
    """How ``generate`` picks each token; each processor is skipped at its neutral value.

    ``temperature=0`` is greedy decoding (the argmax, no randomness; only the repetition
    penalty still applies). ``top_k`` of 0 or ``None`` and ``top_p=1`` switch those
    filters off, as in Hugging Face. ``seed`` makes sampling reproducible when no
    ``torch.Generator`` is given to ``generate``.
    """

    temperature: float = setting(0.8, "0 = greedy")
    top_k: int | None = setting(50, "keep the k most likely tokens; 0 = off")
    top_p: float = setting(0.95, "keep the smallest set of tokens this likely; 1 = off")
    repetition_penalty: float = setting(1.0, "> 1 makes tokens already seen less likely; 1 = off")
    max_new_tokens: int = setting(128, "the longest reply, in tokens")
    seed: int | None = setting(None, "seeds the draws, for a reproducible reply")

    def __post_init__(self) -> None:
        check(self, {
            "temperature": (self.temperature >= 0, "must be >= 0"),
            "top_k": (self.top_k is None or self.top_k >= 0, "must be >= 0 or None"),
            "top_p": (0 <= self.top_p <= 1, "must be in [0, 1]"),
            "repetition_penalty": (self.repetition_penalty > 0, "must be > 0"),
            "max_new_tokens": (self.max_new_tokens >= 0, "must be >= 0"),
        })

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def sampling_candidates(
    logits: torch.Tensor, prev_ids: torch.Tensor, sampling: SamplingConfig,
    keep_ties: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The active processors applied in order (penalty, temperature, top-k, top-p), kept
    to the tokens they leave: their processed logits and their ids, ``[batch, n]`` each.

    After top-k only its k candidates can be drawn, so top-p sorts those k instead of the
    whole vocabulary and the draw is made among them: the same distribution (every other
    token has probability 0), at a fraction of the cost of each step. In greedy mode only
    the repetition penalty applies: the others never change which token is highest.
    ``keep_ties`` is ``top_k_candidates``'.
    """
    if sampling.repetition_penalty != 1.0:
        logits = apply_repetition_penalty(logits, prev_ids, sampling.repetition_penalty)
    if not sampling.greedy and sampling.temperature != 1.0:
        logits = apply_temperature(logits, sampling.temperature)
    if sampling.greedy or not sampling.top_k:
        ids = torch.arange(logits.shape[-1], device=logits.device).expand_as(logits)
    else:
        logits, ids = top_k_candidates(logits, sampling.top_k, keep_ties)
    if not sampling.greedy and sampling.top_p < 1.0:
        logits = top_p_filter(logits, sampling.top_p)
    return logits, ids


def process_logits(
    logits: torch.Tensor, prev_ids: torch.Tensor, sampling: SamplingConfig
) -> torch.Tensor:
    """The active processors applied in order: penalty, temperature, top-k, top-p; over
    the whole vocabulary, removed tokens at ``-inf`` (``sampling_candidates`` spread out).
    """
    values, ids = sampling_candidates(logits, prev_ids, sampling)
    return torch.full_like(logits, float("-inf")).scatter(-1, ids, values)


def race_noise(
    shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """Exp(1) draws for ``pick_token``'s race, from ``generator`` (else torch's global one)."""
    noise = torch.empty(shape, device=device if generator is None else generator.device)
    return noise.exponential_(generator=generator).to(device)


def pick_token(
    values: torch.Tensor, ids: torch.Tensor, noise: torch.Tensor | None
) -> torch.Tensor:
    """The chosen ids ``[batch, 1]`` among candidates (``sampling_candidates``): the
    highest when ``noise`` is ``None`` (greedy), else a draw with probabilities
    ``softmax(values)``.

    The draw is an *exponential race*: candidate i runs with speed ``p_i`` a distance
    ``E_i``, an Exp(1) draw from ``noise``, and the first to arrive wins, the largest
    ``p_i / E_i``. Among independent exponential times, the one with rate ``p_i`` comes
    first with probability ``p_i / sum(p)``: exactly ``torch.multinomial``'s
    distribution. But the randomness is an input drawn beforehand, so the draw can run
    inside a compiled graph, which cannot take a ``torch.Generator``
    (``generate(compile_step=True)``).
    """
    if noise is None:
        return ids.gather(-1, values.argmax(dim=-1, keepdim=True))
    # An Exp(1) draw of exactly 0 would make a removed token's 0 / 0 a NaN, which wins.
    race = values.softmax(dim=-1) / noise.clamp_min(torch.finfo(noise.dtype).tiny)
    return ids.gather(-1, race.argmax(dim=-1, keepdim=True))


def choose_next(
    logits: torch.Tensor, prev_ids: torch.Tensor, sampling: SamplingConfig,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next token ids ``[batch, 1]`` for logits ``[batch, vocab]``: argmax or a draw."""
    values, ids = sampling_candidates(logits, prev_ids, sampling)
    noise = None if sampling.greedy else race_noise(values.shape, generator, logits.device)
    return pick_token(values, ids, noise)


def decode_step(
    model: nn.Module, input_ids: torch.Tensor, cache: KVCache, positions: torch.Tensor,
    prev_ids: torch.Tensor, noise: torch.Tensor | None, sampling: SamplingConfig,
) -> torch.Tensor:
    """One decode step as ``generate(compile_step=True)`` compiles it: the model's logits
    for the token ``input_ids`` at cache slots ``positions``, and the next token chosen
    from them, in one graph.

    Fixed shapes make one graph serve every step: the positions come in as a tensor (from
    ``KVCache.advance``, run outside), ``prev_ids`` is the whole token buffer (slots not yet
    written hold an id outside the vocabulary, which the repetition penalty ignores),
    ``noise`` has one draw per candidate, and top-k keeps exactly k (``keep_ties=False``).
    """
    logits = as_float(model(input_ids, cache, positions)[:, -1])
    values, ids = sampling_candidates(logits, prev_ids, sampling, keep_ties=False)
    return pick_token(values, ids, noise)


def as_float(logits: torch.Tensor) -> torch.Tensor:
    """Logits in at least float32: a bf16 model's are sampled at full precision."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


# --------------------------------------------------------------------------- generation


def _resolve_sampling(sampling: SamplingConfig | None, overrides: dict[str, Any]) -> SamplingConfig:
    known = {f.name for f in dataclasses.fields(SamplingConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(
            f"generate: unknown sampling option(s) {unknown}; SamplingConfig has {sorted(known)}"
        )
    return dataclasses.replace(sampling or SamplingConfig(), **overrides)


def _prompt_tensor(prompt_ids: Sequence[int] | torch.Tensor, device: torch.device) -> torch.Tensor:
    """The prompt as a ``[1, seq]`` long tensor; one sequence only."""
    ids = torch.as_tensor(prompt_ids, dtype=torch.long, device=device)
    if ids.dim() == 2 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.dim() != 1:
        raise ValueError(
            f"generate: prompt_ids must be one sequence ([seq] or [1, seq]), "
            f"got shape {tuple(ids.shape)}"
        )
    if ids.numel() == 0:
        raise ValueError("generate: prompt_ids is empty; the model needs at least one token")
    return ids[None]


def generate(
    model: nn.Module,
    prompt_ids: Sequence[int] | torch.Tensor,
    sampling: SamplingConfig | None = None,
    *,
    stop_ids: Iterable[int] = (),
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    compile_step: bool = False,
    **overrides: Any,
) -> Iterator[int]:
    """Stream the ids of new tokens after ``prompt_ids``, one at a time, as they are made.

    ``sampling`` (default ``SamplingConfig()``) may be adjusted by keyword, e.g.
    ``generate(model, ids, temperature=0, max_new_tokens=20)``. Generation stops when

    - a token in ``stop_ids`` is produced: it is *not* yielded, since it marks the end of
      the reply rather than being part of it (pass the tokenizer's ``im_end_id`` for chat);
    - ``max_new_tokens`` tokens have been yielded;
    - prompt plus generated tokens fill the context (``model.config.max_seq_len``), so the
      whole text can still be fed back to the model (e.g. as chat history).

    Randomness comes from ``generator`` if given, else from a generator seeded with
    ``sampling.seed``, else from torch's global generator. ``use_cache=False`` recomputes
    the full forward pass at every step: the same tokens, only slower, to show what the
    KV cache saves.

    ``compile_step=True`` runs each single-token decode step through ``torch.compile``
    (``decode_step``: the model and the sampling in one graph): the step's hundreds of
    small operators become a few fused kernels, attention over the cache
    (``cached_attention``) among them. On two CPU cores that makes generating with the
    shipped base about 2.2x as fast, with the seed-sized model about 1.9x
    (``bench/results/generate.json``). Building the compiled step took 10 to 24 seconds
    there from an empty compile cache, once per model, context length and sampling
    setting, so it pays off for long or repeated generation, not for one short reply. It
    needs the cache, whose fixed shapes make one graph serve every step. In the rare
    case of logits tied at the k-th place it keeps exactly ``top_k`` candidates where the
    eager step keeps every tied one; otherwise both give the same tokens.

    Arguments are checked now, so a prompt longer than the context raises ``ValueError``
    at the call; the model runs only as the iterator is consumed. While the iterator is
    unfinished the model stays in eval mode; its training flag is restored when the
    iterator finishes or is closed.
    """
    sampling = _resolve_sampling(sampling, overrides)
    parameter = next(model.parameters())
    prompt = _prompt_tensor(prompt_ids, parameter.device)
    context = model.config.max_seq_len
    if prompt.shape[1] > context:
        raise ValueError(
            f"generate: the prompt has {prompt.shape[1]} tokens, more than the model's "
            f"context length of {context}"
        )
    if compile_step and not use_cache:
        raise ValueError("generate: compile_step needs use_cache=True (fixed shapes)")
    if generator is None and sampling.seed is not None and not sampling.greedy:
        generator = torch.Generator(device=parameter.device).manual_seed(sampling.seed)
    # cpp_wrapper: the compiled step's launcher is generated C++ rather than Python, which
    # matters when the kernels it calls take microseconds (bench/results).
    step = (torch.compile(functools.partial(decode_step, model, sampling=sampling),
                          dynamic=False, options={"cpp_wrapper": True})
            if compile_step else None)
    return _stream(model, step, prompt, sampling, frozenset(stop_ids), generator, use_cache)


def _stream(
    model: nn.Module, step: Callable[..., torch.Tensor] | None, prompt: torch.Tensor,
    sampling: SamplingConfig, stop_ids: frozenset[int], generator: torch.Generator | None,
    use_cache: bool,
) -> Iterator[int]:
    """The decoding loop behind ``generate``: the model reads the prompt, then makes each
    later token, eagerly or through ``step`` (the compiled ``decode_step``).

    ``inference_mode`` wraps each computation, never a ``yield``: a context manager held
    across a ``yield`` would stay switched on in the caller's code between steps.
    """
    prompt_len = prompt.shape[1]
    context, vocab_size = model.config.max_seq_len, model.config.vocab_size
    total = min(prompt_len + sampling.max_new_tokens, context)
    if total == prompt_len:
        return
    # The compiled step's candidates, one Exp(1) draw each (top-k keeps exactly k there).
    candidates = min(sampling.top_k or vocab_size, vocab_size)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            # Every token so far, for the repetition penalty and the no-cache forward pass;
            # slots not yet written hold the out-of-vocabulary id vocab_size.
            tokens = torch.full((1, total), vocab_size, dtype=torch.long, device=prompt.device)
            tokens[:, :prompt_len] = prompt
            cache = None
            if use_cache:
                dtype = next(model.parameters()).dtype
                cache = KVCache.empty(model.config, 1, total, prompt.device, dtype)
            logits = as_float(model(prompt, cache)[:, -1])
            next_token = choose_next(logits, tokens, sampling, generator)
        for length in range(prompt_len, total):
            token_id = int(next_token)
            if token_id in stop_ids:
                return
            yield token_id
            if length + 1 == total:
                return
            with torch.inference_mode():
                tokens[:, length] = next_token[:, 0]
                if step is not None:
                    noise = (None if sampling.greedy else
                             race_noise((1, candidates), generator, prompt.device))
                    next_token = step(next_token, cache, cache.advance(1, context), tokens,
                                      noise)
                else:
                    step_input = next_token if use_cache else tokens[:, : length + 1]
                    logits = as_float(model(step_input, cache)[:, -1])
                    next_token = choose_next(logits, tokens, sampling, generator)
    finally:
        model.train(was_training)


# ------------------------------------------------------------------------------ chat replies


def reply_stream(
    model: nn.Module, tokenizer: Tokenizer, messages: Sequence[Message],
    sampling: SamplingConfig | None = None, generator: torch.Generator | None = None,
) -> Iterator[str]:
    """The assistant's reply to ``messages`` as pieces of text, in order, as it is generated.

    The prompt is the ChatML rendering plus the generation prompt; older exchanges are
    dropped if it would leave no room to answer (at least ``max_new_tokens``, or half the
    context). Decoding stops at the tokenizer's ``stop_ids`` (``<|im_end|>`` or
    ``<|endoftext|>``); ``text_stream`` turns the ids into text. ``"".join`` of the pieces
    is the reply (``reply`` returns it whole). Arguments are checked at the call.
    """
    sampling = sampling or SamplingConfig()
    context = model.config.max_seq_len
    room = context - min(sampling.max_new_tokens, context // 2)
    prompt = encode_chat(tokenizer, messages, max_len=room, add_generation_prompt=True).input_ids
    tokens = generate(model, prompt, sampling, stop_ids=tokenizer.stop_ids, generator=generator)
    return text_stream(tokenizer, tokens)


def text_stream(tokenizer: Tokenizer, tokens: Iterable[int]) -> Iterator[str]:
    """``tokens`` decoded as they come: each piece is the text the newest token completes.

    The ids so far are decoded as a whole at each step and only the new suffix is yielded,
    because a Chinese character or an emoji may span several byte-level tokens: a trailing
    replacement character means "incomplete" and waits for the next token. ``"".join`` of
    the pieces is ``tokenizer.decode`` of all the tokens.
    """
    ids: list[int] = []
    shown = ""
    for token in tokens:
        ids.append(token)
        text = tokenizer.decode(ids)
        if not text.endswith("\ufffd"):
            yield text[len(shown):]
            shown = text
    text = tokenizer.decode(ids)
    if text != shown:
        yield text[len(shown):]


def reply(
    model: nn.Module, tokenizer: Tokenizer, messages: Sequence[Message],
    sampling: SamplingConfig | None = None, generator: torch.Generator | None = None,
    on_piece: Callable[[str], Any] | None = None,
) -> str:
    """The assistant's whole reply to ``messages``: ``reply_stream``'s pieces joined.

    ``on_piece`` is called with each piece as it is made, so a terminal can print the
    reply as it grows (``on_piece=print_piece``) and still get the whole text back. The
    command line, the demo, the chat widget and the evaluation all answer through this
    one function.
    """
    pieces = []
    for piece in reply_stream(model, tokenizer, messages, sampling, generator):
        if on_piece is not None:
            on_piece(piece)
        pieces.append(piece)
    return "".join(pieces)


def print_piece(piece: str) -> None:
    """Print a piece of a reply at once, on the same line: ``reply``'s ``on_piece`` in a
    terminal."""
    print(piece, end="", flush=True)
