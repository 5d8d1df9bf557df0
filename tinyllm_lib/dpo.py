"""Direct Preference Optimization: teach a model which of two replies is better.

Supervised fine-tuning shows a model good replies only. Preference tuning also shows it a
bad one for the same prompt and asks it to move probability from the bad reply to the
good one. DPO (Rafailov et al. 2023) does this without a reward model: under the
Bradley-Terry model the probability that a human prefers reply ``y_w`` over ``y_l`` is
``sigmoid(r(y_w) - r(y_l))``, and the reward that the KL-regularised optimum implies is
``r(y) = beta * log(pi(y|x) / pi_ref(y|x))`` (up to a term of the prompt alone, which
cancels in the difference). Maximising the likelihood of the observed preferences is then
a loss on the policy's and the reference's log-probabilities alone::

    loss = -log sigmoid(beta * ((log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))))

The parts, in order: preference files (``load_preferences``, TRL's two shapes), their
encoding (``encode_pair``: only the reply and its ``<|im_end|>`` are scored),
``sequence_logps`` (the *sum* of the reply's token log-probabilities), ``dpo_loss`` (TRL's
``sigmoid``, ``ipo`` and ``hinge``), and ``DPOObjective``, which plugs all of it into the
ordinary ``Trainer``.

The reference model costs no second copy: it is the policy with its trainable adapter
switched off (``lora.disable_adapters``). When DPO follows supervised fine-tuning, the SFT
adapter must first be merged into the base (``lora.merge_and_unload``) and a fresh adapter
trained on top; otherwise switching the adapter off gives the base model, not the SFT
model, as the reference. A model trained without an adapter (full fine-tuning) has nothing
to switch off, so its reference log-probabilities are computed once, before training
(``precompute_reference``), which is also an option for LoRA.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .chat import EncodedChat, Message, check_messages, encode_chat, split_turns
from .config import LOSS_TYPES, DPOConfig
from .data import Batch, DatasetError, collate, read_records
from .files import jsonl_bytes, write_atomic
from .lora import disable_adapters, lora_layers
from .model import IGNORE_INDEX
from .sampling import SamplingConfig, reply
from .tokenizer import Tokenizer

METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
           "logps/chosen", "logps/rejected", "nll_loss")
"""What a DPO step logs, by TRL's names: means over the step's pairs. ``nll_loss`` is the
chosen reply's negative log-likelihood per token, the term RPO adds; TRL logs it only then,
this logs it always, since a rising one is the first sign of DPO unlearning its replies."""


# ------------------------------------------------------------------------ preference data


@dataclass(frozen=True)
class PreferencePair:
    """A prompt (messages ending with the user's) and two replies to it, the better first."""

    prompt: tuple[Message, ...]
    chosen: str
    rejected: str

    def to_json(self) -> dict[str, Any]:
        """TRL's conversational shape, which ``record_to_pair`` reads back as this pair."""
        return {
            "prompt": [dict(m) for m in self.prompt],
            "chosen": [{"role": "assistant", "content": self.chosen}],
            "rejected": [{"role": "assistant", "content": self.rejected}],
        }


def _reply(record: dict[str, Any], name: str, conversational: bool) -> str:
    """The ``chosen`` or ``rejected`` reply: a string, or one assistant message."""
    if name not in record:
        raise ValueError(f"missing field {name!r}")
    value = record[name]
    if not conversational:
        if not isinstance(value, str):
            raise ValueError(f"field {name!r} must be a string like 'prompt', "
                             f"got {type(value).__name__}")
        return value
    if not (isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict)):
        raise ValueError(f"field {name!r} must be a list of one assistant message, "
                         f"like [{{\"role\": \"assistant\", \"content\": ...}}]")
    message = value[0]
    try:
        check_messages([message])
    except ValueError as err:
        raise ValueError(f"field {name!r}: {err}") from None
    if message["role"] != "assistant":
        raise ValueError(f"field {name!r}: the reply's role must be 'assistant', "
                         f"got {message['role']!r}")
    return message["content"]


def record_to_pair(record: Any) -> PreferencePair:
    """One parsed record in either of TRL's shapes, checked; ``ValueError`` says what is wrong.

    Standard: ``prompt``, ``chosen`` and ``rejected`` are strings (the prompt becomes one
    user message). Conversational: ``prompt`` is a list of messages ending with the
    user's, ``chosen`` and ``rejected`` each a list of one assistant message.
    """
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    if "prompt" not in record:
        raise ValueError("missing field 'prompt'")
    prompt = record["prompt"]
    conversational = isinstance(prompt, list)
    if conversational:
        messages = [dict(m) if isinstance(m, dict) else m for m in prompt]
        try:
            check_messages(messages)
            if messages and messages[-1]["role"] == "assistant":
                raise ValueError(
                    f"message {len(messages) - 1}: the prompt ends with an assistant turn; "
                    "the reply being judged belongs in 'chosen' and 'rejected'")
            split_turns(messages, add_generation_prompt=True)
        except ValueError as err:
            raise ValueError(f"field 'prompt': {err}") from None
    elif isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    else:
        raise ValueError(f"field 'prompt' must be a string or a list of messages, "
                         f"got {type(prompt).__name__}")
    chosen = _reply(record, "chosen", conversational)
    rejected = _reply(record, "rejected", conversational)
    if chosen == rejected:
        raise ValueError("'chosen' and 'rejected' are the same reply: the pair prefers nothing")
    return PreferencePair(tuple(Message(role=m["role"], content=m["content"]) for m in messages),
                          chosen, rejected)


def load_preferences(path: str | Path) -> list[PreferencePair]:
    """Every preference pair in a ``.jsonl`` or ``.json`` file, either TRL shape per record.

    A bad record stops loading with a ``DatasetError`` naming the file, the line (or
    record index) and the field.
    """
    path = Path(path)
    pairs = []
    for where, record in read_records(path):
        try:
            pairs.append(record_to_pair(record))
        except ValueError as err:
            raise DatasetError(f"{path}: {where}: {err}") from None
    if not pairs:
        raise DatasetError(f"{path}: no preference pairs")
    return pairs


def write_preferences(path: str | Path, pairs: Sequence[PreferencePair]) -> None:
    """Write pairs as conversational JSONL (``PreferencePair.to_json``), atomically."""
    write_atomic(path, jsonl_bytes(pair.to_json() for pair in pairs))


def sample_preferences(
    model: nn.Module, tokenizer: Tokenizer, conversations: Sequence[Sequence[Message]],
    samples: int = 4, temperature: float = 0.8, max_new_tokens: int = 32, seed: int = 0,
) -> list[PreferencePair]:
    """On-policy pairs: the model's own wrong reply (rejected) against a right one (chosen).

    Each conversation ends with the expected reply, which the world's tasks make exact.
    The model answers the prompt before it ``samples`` times; a reply is right when it
    equals the expected one (whitespace stripped, as ``evaluate.exact_match`` judges).
    The first wrong sample is rejected; chosen is the first right sample, or the expected
    reply when none was right. A prompt the model always answers right teaches nothing
    and gives no pair. Seeded: the same model, data and seed give the same pairs.
    """
    # The sampler's usual top-k and top-p cut the far tail: a reply that ends in random
    # tokens is a wrong answer no greedy decoder would give, and teaches little.
    settings = SamplingConfig(temperature=temperature, max_new_tokens=max_new_tokens)
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    pairs = []
    for messages in conversations:
        prompt, expected = messages[:-1], messages[-1]["content"].strip()
        replies = [reply(model, tokenizer, prompt, settings, generator).strip()
                   for _ in range(samples)]
        wrong = [text for text in replies if text != expected]
        if wrong:
            right = [text for text in replies if text == expected]
            chosen = right[0] if right else expected
            pairs.append(PreferencePair(tuple(prompt), chosen, wrong[0]))
    return pairs


# ------------------------------------------------------------------------------- encoding


@dataclass
class EncodedPair:
    """A pair's two conversations as token ids, only the final reply labelled in each.

    ``ref_logps`` holds the reference model's ``(chosen, rejected)`` log-probabilities
    once ``precompute_reference`` has computed them.
    """

    chosen: EncodedChat
    rejected: EncodedChat
    ref_logps: tuple[float, float] | None = None

    def __len__(self) -> int:
        return max(len(self.chosen), len(self.rejected))


def _encode_reply(tokenizer: Tokenizer, prompt: Sequence[Message], reply: str,
                  prompt_len: int) -> EncodedChat:
    """The prompt and one reply; labels only on the reply (earlier assistant turns are
    part of the prompt, not of what is judged)."""
    chat = encode_chat(tokenizer, [*prompt, Message(role="assistant", content=reply)])
    return EncodedChat(chat.input_ids, [IGNORE_INDEX] * prompt_len + chat.labels[prompt_len:])


def encode_pair(tokenizer: Tokenizer, pair: PreferencePair, max_len: int) -> EncodedPair:
    """Render both conversations with the tokenizer's chat template and label the replies.

    A conversation is the prompt then the reply, so the two share the prompt's tokens and
    differ after them; the labels are the reply's tokens and its ``<|im_end|>``. A pair
    longer than ``max_len`` is refused, not cut: cutting would drop the end of a reply,
    which is exactly what is being judged.
    """
    prompt_len = len(encode_chat(tokenizer, pair.prompt, add_generation_prompt=True))
    chosen = _encode_reply(tokenizer, pair.prompt, pair.chosen, prompt_len)
    rejected = _encode_reply(tokenizer, pair.prompt, pair.rejected, prompt_len)
    longest = max(len(chosen), len(rejected))
    if longest > max_len:
        raise ValueError(f"the pair takes {longest} tokens, more than max_len={max_len}")
    return EncodedPair(chosen, rejected)


def encode_pairs(
    tokenizer: Tokenizer, pairs: Sequence[PreferencePair], max_len: int, source: str = "pair"
) -> list[EncodedPair]:
    """``encode_pair`` on each pair; an error names the pair (``source`` and its index)."""
    encoded = []
    for index, pair in enumerate(pairs):
        try:
            encoded.append(encode_pair(tokenizer, pair, max_len))
        except ValueError as err:
            raise ValueError(f"{source} {index}: {err}") from None
    return encoded


@dataclass
class PairBatch(Batch):
    """Chosen rows then rejected rows (``[2 * pairs, seq]``), so one forward pass scores
    both; ``ref_logps`` ``[2 * pairs]`` in the same order when they were precomputed."""

    ref_logps: torch.Tensor | None = None

    @property
    def num_pairs(self) -> int:
        return self.input_ids.shape[0] // 2

    def to(self, device: torch.device | str) -> PairBatch:
        batch = super().to(device)
        ref = self.ref_logps.to(device) if self.ref_logps is not None else None
        return PairBatch(batch.input_ids, batch.labels, batch.attention_mask, ref)


def collate_pairs(pairs: Sequence[EncodedPair], pad_id: int) -> PairBatch:
    """One batch of the chosen conversations followed by the rejected ones."""
    batch = collate([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id)
    ref = None
    if all(p.ref_logps is not None for p in pairs):
        ref = torch.tensor([p.ref_logps[0] for p in pairs] + [p.ref_logps[1] for p in pairs],
                           dtype=torch.float32)
    return PairBatch(batch.input_ids, batch.labels, batch.attention_mask, ref)


# ------------------------------------------------------------------------------- the loss


def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``[batch, seq]`` log-probability of each next label token (0 where there is none).

    The same shift as the training loss: position ``t``'s logits predict label ``t + 1``.
    Cross-entropy per token is minus that log-probability, without materialising the
    log-softmax of every vocabulary entry. Taken in float32 at least (bf16 logits would
    round a reply's sum of hundreds of terms), in float64 when the logits are.
    """
    shifted = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    nll = F.cross_entropy(logits.transpose(1, 2), shifted, ignore_index=IGNORE_INDEX,
                          reduction="none")
    return -nll


def sequence_logps(
    model: nn.Module, input_ids: torch.Tensor, labels: torch.Tensor, average: bool = False
) -> torch.Tensor:
    """``[batch]``: the *sum* of each sequence's label-token log-probabilities.

    The sum is the log-probability of the whole reply, ``log pi(y | x)``, which is what the
    DPO derivation has. The mean per token (``average=True``) is another objective: it
    ignores how long a reply is, so a long bad reply is penalised no more than a short
    one. IPO uses it (as TRL does); DPO's sigmoid and hinge losses use the sum.
    """
    logps = token_logps(model(input_ids), labels).sum(-1)
    return logps / reply_tokens(labels) if average else logps


def reply_tokens(labels: torch.Tensor) -> torch.Tensor:
    """``[batch]``: how many tokens each sequence's log-probability sums (at least 1)."""
    return (labels[:, 1:] != IGNORE_INDEX).sum(-1).clamp(min=1)


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses and the chosen and rejected rewards ``beta * (policy - ref)``.

    ``h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)`` is how much
    more the policy prefers the chosen reply than the reference does. The losses:

    - ``sigmoid`` (the paper's): ``-log sigmoid(beta h)``; with ``label_smoothing = e``,
      conservative DPO (cDPO) treats each label as wrong with probability ``e``:
      ``-(1 - e) log sigmoid(beta h) - e log sigmoid(-beta h)``;
    - ``ipo`` (Azar et al. 2023): ``(h - 1 / (2 beta))^2``, a squared loss that stops at a
      finite margin instead of pushing ``h`` to infinity on data without ties;
    - ``hinge`` (SLiC): ``max(0, 1 - beta h)``.

    The rewards are detached: they are what is logged, not part of the gradient.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"dpo_loss: loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if beta <= 0:
        raise ValueError(f"dpo_loss: beta must be > 0, got {beta}")
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"dpo_loss: label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if label_smoothing and loss_type != "sigmoid":
        raise ValueError(f"dpo_loss: label_smoothing is cDPO's, for loss_type 'sigmoid' only "
                         f"(got {loss_type!r})")
    chosen_ratio = policy_chosen_logps - ref_chosen_logps
    rejected_ratio = policy_rejected_logps - ref_rejected_logps
    h = chosen_ratio - rejected_ratio
    if loss_type == "sigmoid":
        losses = (-(1 - label_smoothing) * F.logsigmoid(beta * h)
                  - label_smoothing * F.logsigmoid(-beta * h))
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        losses = torch.relu(1 - beta * h)
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


# -------------------------------------------------------------------------- the objective


@torch.inference_mode()
def precompute_reference(
    model: nn.Module, pairs: Sequence[EncodedPair], batch_size: int = 8,
    average: bool = False,
) -> None:
    """Fill every pair's ``ref_logps`` with the model's log-probabilities, as it is now.

    Call it before training (on the model as the reference: LoRA layers, if any, are
    switched off). The reference then costs nothing per step, and a fully fine-tuned
    model needs no frozen copy of itself.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        with _reference(model):
            for start in range(0, len(pairs), batch_size):
                chunk = pairs[start : start + batch_size]
                batch = collate_pairs(chunk, pad_id=0).to(device)
                logps = sequence_logps(model, batch.input_ids, batch.labels, average).tolist()
                for i, pair in enumerate(chunk):
                    pair.ref_logps = (logps[i], logps[len(chunk) + i])
    finally:
        model.train(was_training)


def _reference(model: nn.Module) -> Any:
    """The reference as it is before training: the model with its adapters off, or the
    model itself when it has none (full fine-tuning)."""
    return disable_adapters(model) if lora_layers(model) else contextlib.nullcontext()


class DPOObjective:
    """DPO for the ``Trainer``: examples are ``EncodedPair``s, the loss is a mean per pair.

    Each micro-batch runs the chosen and rejected conversations through the policy in one
    forward pass, and, unless the pairs carry precomputed reference log-probabilities,
    once more through the reference (``disable_adapters``, no gradient). ``step_metrics``
    gives TRL's metrics (``METRICS``) averaged over the step's pairs. ``config`` gives
    beta, the loss and the label smoothing (``precompute_ref`` is the caller's to act on:
    ``precompute_reference`` before training).
    """

    def __init__(self, config: DPOConfig | None = None) -> None:
        self.config = config or DPOConfig()
        self._sums: dict[str, float] = {}
        self._pairs = 0

    @property
    def average(self) -> bool:
        """IPO scores the mean token log-probability of a reply (TRL's choice)."""
        return self.config.loss_type == "ipo"

    def check(self, examples: Sequence[EncodedPair]) -> None:
        for i, pair in enumerate(examples):
            if not isinstance(pair, EncodedPair):
                raise ValueError(f"train example {i}: DPO trains on EncodedPair, "
                                 f"got {type(pair).__name__}")

    def collate(self, examples: Sequence[EncodedPair], pad_id: int) -> PairBatch:
        return collate_pairs(examples, pad_id)

    def count(self, batch: PairBatch) -> int:
        return batch.num_pairs

    def losses(self, model: nn.Module, batch: PairBatch) -> tuple[torch.Tensor, ...]:
        """Per-pair losses, rewards and the policy's log-probabilities of one batch."""
        n = batch.num_pairs
        policy = sequence_logps(model, batch.input_ids, batch.labels, self.average)
        ref = batch.ref_logps
        if ref is None:
            if not lora_layers(model):
                raise ValueError(
                    "DPO: the model has no adapter to switch off, so it cannot be its own "
                    "reference; compute the reference once with precompute_reference")
            with torch.no_grad(), disable_adapters(model):
                ref = sequence_logps(model, batch.input_ids, batch.labels, self.average)
        config = self.config
        losses, chosen, rejected = dpo_loss(policy[:n], policy[n:], ref[:n], ref[n:],
                                            config.beta, config.loss_type,
                                            config.label_smoothing)
        nll = -policy[:n] if self.average else -policy[:n] / reply_tokens(batch.labels[:n])
        if config.rpo_alpha:
            losses = losses + config.rpo_alpha * nll
        return losses, chosen, rejected, policy.detach(), nll.detach()

    def loss_sum(self, model: nn.Module, batch: PairBatch) -> torch.Tensor:
        losses, *measured = self.losses(model, batch)
        self._add(*measured)
        return losses.sum()

    def _add(self, chosen: torch.Tensor, rejected: torch.Tensor, policy: torch.Tensor,
             nll: torch.Tensor) -> None:
        n = len(chosen)
        values = {
            "rewards/chosen": chosen, "rewards/rejected": rejected,
            "rewards/accuracies": (chosen > rejected).float(),
            "rewards/margins": chosen - rejected,
            "logps/chosen": policy[:n], "logps/rejected": policy[n:], "nll_loss": nll,
        }
        for name, value in values.items():
            self._sums[name] = self._sums.get(name, 0.0) + float(value.sum())
        self._pairs += n

    def step_metrics(self) -> dict[str, float]:
        metrics = {name: self._sums[name] / self._pairs for name in METRICS} if self._pairs else {}
        self._sums, self._pairs = {}, 0
        return metrics

    @torch.no_grad()
    def validate(
        self, model: nn.Module, examples: Sequence[EncodedPair], batch_size: int
    ) -> dict[str, float]:
        """Mean DPO loss over the validation pairs, and their metrics (in eval mode)."""
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        total = 0.0
        saved = self._sums, self._pairs  # a validation inside a step must not mix in
        self._sums, self._pairs = {}, 0
        try:
            for start in range(0, len(examples), batch_size):
                batch = self.collate(examples[start : start + batch_size], 0).to(device)
                losses, *measured = self.losses(model, batch)
                total += float(losses.sum())
                self._add(*measured)
            metrics = {"loss": total / len(examples), **self.step_metrics()}
        finally:
            self._sums, self._pairs = saved
            model.train(was_training)
        return metrics
