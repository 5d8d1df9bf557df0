"""TinyLLM: a decoder-only transformer with Llama's architecture and parameter names.

Each block is pre-norm: ``x + Attention(RMSNorm(x))`` then ``x + MLP(RMSNorm(x))``.
Positions enter only through rotary embeddings applied to queries and keys; the MLP is
SwiGLU; attention may share key/value heads between query heads (grouped-query attention).
The module tree mirrors Hugging Face's ``LlamaForCausalLM`` so that ``state_dict()`` keys
are the same and a Llama checkpoint of the same shape gives the same logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig

IGNORE_INDEX = -100
"""Label value that carries no loss (prompt tokens, padding)."""


def default_device() -> torch.device:
    """The best device this machine has: CUDA, then Apple's MPS, then the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the matrix multiplies consuming ``x`` run in: autocast's if it is on."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


class RMSNorm(nn.Module):
    """Root-mean-square norm: ``x / sqrt(mean(x^2) + eps) * weight``.

    Unlike LayerNorm it neither subtracts the mean nor adds a bias: rescaling alone keeps
    activations in range and is cheaper. The statistic is computed in float32 even under
    bf16 autocast, because a mean of squares loses precision fast in 8 mantissa bits.
    The result is handed on in the dtype the next layers compute in: under autocast, the
    q, k and v projections would each cast it to bf16 themselves; casting once here is
    the same arithmetic with one copy (and one saved activation) instead of three.
    """

    def __init__(self, size: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight * normed.to(x.dtype)).to(compute_dtype(x))


def rope_tables(
    config: ModelConfig, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine and sine tables ``[max_seq_len, head_dim // 2]`` for rotary position
    embedding: one angle per position and pair of dimensions.

    Pair ``i`` of each head's dimensions turns by angle ``position * theta^(-2i/head_dim)``:
    fast-turning pairs encode fine position, slow ones coarse position. Like Llama, the
    pairs are (i, i + head_dim/2): the first half of a head's dimensions against the second.
    """
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    positions = torch.arange(config.max_seq_len, dtype=torch.float64)
    angles = torch.outer(positions, inv_freq)
    return angles.cos().float().to(device), angles.sin().float().to(device)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [batch, heads, seq, head_dim]`` by the angles of its positions.

    Each pair ``(a, b) = (x[i], x[i + d/2])`` turns by its angle, the 2-D rotation
    ``(a cos - b sin, b cos + a sin)``. After rotation, the dot product of a query at
    position m and a key at position n depends only on m - n: attention sees relative
    position for free. The tables should be in ``x``'s dtype already: ``TinyLLM.forward``
    converts them once per pass, not twice per layer.
    """
    a, b = x.chunk(2, dim=-1)
    return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)


@dataclass
class KVCache:
    """Keys and values of every layer for the tokens seen so far, preallocated.

    Without a cache, generating token t re-computes keys and values for all t - 1 earlier
    tokens. With it, each step computes them for one new token and writes them into a
    buffer sized for the whole context, so a decode step costs O(t) instead of O(t^2).

    Attention always reads the whole buffer, with the slots not yet written masked out:
    every decode step then has the same tensor shapes whatever its position, which is
    what lets ``torch.compile`` build one graph for all of them (``generate(...,
    compile_step=True)``). The only Python number, ``length``, is kept by ``advance``,
    which the compiled step's caller runs, passing the positions in.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    length: int = 0

    @classmethod
    def empty(
        cls, config: ModelConfig, batch_size: int = 1, max_len: int | None = None,
        device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
    ) -> KVCache:
        shape = (batch_size, config.kv_heads, max_len or config.max_seq_len, config.head_dim)

        def buffers() -> list[torch.Tensor]:
            layers = range(config.num_layers)
            return [torch.zeros(shape, device=device, dtype=dtype) for _ in layers]

        return cls(keys=buffers(), values=buffers())

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    def advance(self, seq: int, context: int) -> torch.Tensor:
        """Claim the next ``seq`` slots: their positions, as a tensor; ``length`` moves on.

        ``context`` is the model's context length; the buffer may be shorter. Run outside
        compiled graphs: a graph that read ``length`` would be specialised to its value
        and rebuilt at every step, so a compiled step takes the positions as an input
        (``TinyLLM.forward``'s ``positions``) from its caller, which runs ``advance``.
        """
        room = min(self.capacity, context)
        if self.length + seq > room:
            raise ValueError(
                f"sequence of {self.length + seq} tokens exceeds the context length {room}"
            )
        positions = torch.arange(self.length, self.length + seq, device=self.keys[0].device)
        self.length += seq
        return positions

    def rows(self, start: int, stop: int) -> KVCache:
        """A view of rows ``start:stop``: what the model writes into it lands in this cache.

        A batching engine (``engine.py``) keeps one cache row per running sequence; it
        prefills a new sequence into its own row alone and runs a decode step over the
        first rows, those in use.
        """
        return KVCache(keys=[k[start:stop] for k in self.keys],
                       values=[v[start:stop] for v in self.values])

    def write(
        self, layer: int, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k`` and ``v`` ``[batch, kv_heads, seq, head_dim]`` of ``layer`` at slots
        ``positions``; return the layer's whole key and value buffers.

        ``positions`` is ``[seq]``, the same slots for every row (``advance``'s), or
        ``[batch, seq]``, each row its own: a batch of sequences of different lengths,
        where each row's new token goes to that row's next free slot.
        """
        keys, values = self.keys[layer], self.values[layer]
        if positions.dim() == 1:
            return keys.index_copy_(2, positions, k), values.index_copy_(2, positions, v)
        slots = positions[:, None, :, None].expand_as(k)
        return keys.scatter_(2, slots, k), values.scatter_(2, slots, v)


class Attention(nn.Module):
    """Causal self-attention with rotary positions and grouped-query heads."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.kv_heads = config.kv_heads
        self.head_dim = config.head_dim
        self.dropout = config.dropout
        self.q_proj = nn.Linear(config.hidden_size, config.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(config.num_heads * self.head_dim, config.hidden_size, bias=False)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
        cache: KVCache | None = None, layer: int = 0, positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend causally over ``x``; with a ``cache``, ``positions`` are the slots
        ``x``'s tokens take in it: ``[seq]`` from ``KVCache.advance``, or ``[batch, seq]``
        when each row has its own (``KVCache.write``)."""
        batch, seq, _ = x.shape
        q = self.q_proj(x).view(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, seq, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, seq, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)

        if cache is None:
            out = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0,
                enable_gqa=self.kv_heads != self.num_heads,
            )
        else:
            k, v = cache.write(layer, positions, k, v)
            out = cached_attention(q, k, v, positions)
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, -1))


def cached_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor
) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d)) v`` of new queries over a whole ``KVCache`` buffer.

    The query at position p sees the slots 0..p: later slots are empty or, for a chunk
    of several tokens, its own future, and get a score of ``-inf``. Written out rather
    than through ``F.scaled_dot_product_attention``: a decode step has one query row, for
    which the fused kernel's setup costs more than the arithmetic, while ``torch.compile``
    fuses these few lines into a couple of loops (``bench/results``). Grouped-query heads
    share a key and value head, repeated here to one per query head; the softmax is taken
    in float32, as the fused kernel does, so that bf16 weights lose nothing there.

    ``positions`` is ``[seq]`` or, for rows of different lengths, ``[batch, seq]``. Each
    row is computed over the same number of slots whatever the others hold, and a masked
    slot gets probability exactly 0, so a row's result does not depend on the rows
    batched with it: a sequence decodes to the same tokens alone or in a batch.
    """
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    slots = torch.arange(k.shape[2], device=q.device)
    if positions.dim() == 2:
        positions = positions[:, None]  # [batch, 1, seq]: the same for every head
    scores = scores.masked_fill(slots > positions[..., None], float("-inf"))
    return scores.float().softmax(dim=-1).to(v.dtype) @ v


class MLP(nn.Module):
    """SwiGLU feed-forward: ``down(silu(gate(x)) * up(x))``.

    The gate decides, per hidden unit, how much of the ``up`` projection passes; gated
    MLPs train better than a plain ReLU/GELU MLP at the same parameter count.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.mlp_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.mlp_size, bias=False)
        self.down_proj = nn.Linear(config.mlp_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderBlock(nn.Module):
    """One pre-norm transformer block: normalise, transform, add back to the residual."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
        cache: KVCache | None, layer: int, positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        attended = self.self_attn(self.input_layernorm(x), cos, sin, cache, layer, positions)
        x = x + self.dropout(attended)
        return x + self.dropout(self.mlp(self.post_attention_layernorm(x)))


class DecoderStack(nn.Module):
    """Embeddings, the blocks and the final norm: Llama's ``model`` submodule."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderBlock(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class TinyLLM(nn.Module):
    """A decoder-only language model: token ids in, next-token logits out."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.model = DecoderStack(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.apply(self._init_weights)
        if config.tie_embeddings:
            # One matrix both embeds tokens and scores them: fewer parameters, and the
            # input and output views of a token stay consistent.
            self.lm_head.weight = self.model.embed_tokens.weight
        cos, sin = rope_tables(config)
        # Non-persistent: derived from the config, so they stay out of the state dict.
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        # Trade compute for memory in training (the trainer sets it from
        # TrainConfig.gradient_checkpointing); see forward.
        self.gradient_checkpointing = False

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # Llama's initialisation: normal(0, 0.02) for every matrix.
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(
        self, input_ids: torch.Tensor, cache: KVCache | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits ``[batch, seq, vocab]`` for ``input_ids [batch, seq]``.

        With a ``cache``, ``input_ids`` continue the tokens already cached: their keys and
        values go to the cache slots ``positions``, by default the next ones
        (``cache.advance``, which moves ``cache.length`` on). ``positions`` may be
        ``[batch, seq]``, one row of slots per sequence (``engine.py``'s decode step).
        """
        seq = input_ids.shape[1]
        if cache is None:
            if seq > self.config.max_seq_len:
                raise ValueError(f"sequence of {seq} tokens exceeds the context length "
                                 f"{self.config.max_seq_len}")
            positions = None
            cos, sin = self.rope_cos[:seq], self.rope_sin[:seq]
        else:
            if positions is None:
                positions = cache.advance(seq, self.config.max_seq_len)
            cos, sin = self.rope_cos[positions], self.rope_sin[positions]
            if positions.dim() == 2:  # each row its own positions: [batch, 1, seq, half]
                cos, sin = cos[:, None], sin[:, None]
        x = self.model.embed_tokens(input_ids)
        cos, sin = cos.to(compute_dtype(x)), sin.to(compute_dtype(x))
        for i, block in enumerate(self.model.layers):
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                # Backward needs every block's intermediate activations; checkpointing keeps
                # only the block's input and recomputes the rest during backward: about one
                # extra forward pass of compute for most of the activation memory. Imported
                # here, not at the top: torch.utils.checkpoint loads torch._dynamo, which
                # costs every process that imports the model 1.4 s and 70 MB of memory.
                from torch.utils.checkpoint import checkpoint

                x = checkpoint(block, x, cos, sin, None, i, use_reentrant=False)
            else:
                x = block(x, cos, sin, cache, i, positions)
        return self.lm_head(self.model.norm(x))

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device


def next_token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token negative log-likelihood of ``logits`` against ``labels``.

    Labels are aligned with the inputs; position t's logits predict label t + 1. The
    labels are the ones shifted (one place left, an ignored label appended) rather than
    the logits: slicing ``logits[:, :-1]`` would copy the largest tensor of the step, and
    its gradient once more. Only tensors come out, no Python number, so ``torch.compile``
    can trace the loss into the same graph as the model (``train.batch_nll_sum``).
    """
    shifted_labels = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX).reshape(-1)
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), shifted_labels,
        ignore_index=IGNORE_INDEX, reduction="sum",
    )


def label_token_count(labels: torch.Tensor) -> int:
    """How many positions the loss is taken over: labels other than ``IGNORE_INDEX`` after
    the shift.

    The first label is dropped because no earlier position predicts it. Summing this over
    the micro-batches of an optimizer step gives the denominator that makes gradient
    accumulation equal one large batch.
    """
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def lm_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed next-token negative log-likelihood (``next_token_nll``) and the number of
    tokens it covers (``label_token_count``).

    Returning the *sum* lets callers normalise by the token count of a whole optimizer
    step (gradient accumulation) or a whole dataset (perplexity).
    """
    return next_token_nll(logits, labels), label_token_count(labels)


def parameter_counts(config: ModelConfig) -> dict[str, int]:
    """Parameters per component, computed from the shapes (a tied head costs nothing)."""
    h, layers = config.hidden_size, config.num_layers
    kv = config.kv_heads * config.head_dim
    return {
        "embeddings": config.vocab_size * h,
        "attention": layers * (2 * h * h + 2 * h * kv),
        "mlp": layers * 3 * h * config.mlp_size,
        "norms": (2 * layers + 1) * h,
        "head": 0 if config.tie_embeddings else config.vocab_size * h,
    }
