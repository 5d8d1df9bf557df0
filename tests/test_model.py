"""TinyLLM against the math written out by hand in float64."""

import math

import pytest
import torch

from tinyllm_lib.config import PRESETS, ModelConfig
from tinyllm_lib.model import (
    KVCache,
    RMSNorm,
    TinyLLM,
    apply_rope,
    lm_loss_sum,
    parameter_counts,
    rope_tables,
)

CFG = PRESETS["test"]


def make_model(config: ModelConfig = CFG, seed: int = 0) -> TinyLLM:
    torch.manual_seed(seed)
    return TinyLLM(config).eval()


def reference_forward(model: TinyLLM, ids: torch.Tensor) -> torch.Tensor:
    """The whole forward pass written out with explicit loops and float64 math."""
    cfg = model.config
    sd = {k: v.double() for k, v in model.state_dict().items()}
    hd, nh, nkv = cfg.head_dim, cfg.num_heads, cfg.kv_heads
    seq = ids.shape[1]

    def rms(x, w):
        return w * x / torch.sqrt((x * x).mean(-1, keepdim=True) + cfg.rms_norm_eps)

    pos = torch.arange(seq, dtype=torch.float64)
    freqs = [cfg.rope_theta ** (-2 * i / hd) for i in range(hd // 2)]

    def rope(v):  # v: [seq, hd]; pair (i, i + hd/2) rotates by pos * freq_i
        out = v.clone()
        for i, f in enumerate(freqs):
            c, s = torch.cos(pos * f), torch.sin(pos * f)
            a, b = v[:, i], v[:, i + hd // 2]
            out[:, i], out[:, i + hd // 2] = a * c - b * s, b * c + a * s
        return out

    x = sd["model.embed_tokens.weight"][ids[0]]
    causal = torch.tril(torch.ones(seq, seq, dtype=torch.bool))
    for layer in range(cfg.num_layers):
        p = f"model.layers.{layer}."
        h = rms(x, sd[p + "input_layernorm.weight"])
        q = h @ sd[p + "self_attn.q_proj.weight"].T
        k = h @ sd[p + "self_attn.k_proj.weight"].T
        v = h @ sd[p + "self_attn.v_proj.weight"].T
        heads = []
        for head in range(nh):
            kvh = head // (nh // nkv)
            qh = rope(q[:, head * hd : (head + 1) * hd])
            kh = rope(k[:, kvh * hd : (kvh + 1) * hd])
            vh = v[:, kvh * hd : (kvh + 1) * hd]
            scores = (qh @ kh.T) / math.sqrt(hd)
            scores = scores.masked_fill(~causal, float("-inf"))
            heads.append(torch.softmax(scores, -1) @ vh)
        x = x + torch.cat(heads, -1) @ sd[p + "self_attn.o_proj.weight"].T
        h = rms(x, sd[p + "post_attention_layernorm.weight"])
        gate = h @ sd[p + "mlp.gate_proj.weight"].T
        up = h @ sd[p + "mlp.up_proj.weight"].T
        act = gate * torch.sigmoid(gate) * up
        x = x + act @ sd[p + "mlp.down_proj.weight"].T
    x = rms(x, sd["model.norm.weight"])
    return (x @ sd["lm_head.weight"].T)[None]


def test_forward_matches_float64_reference():
    model = make_model()
    ids = torch.randint(0, CFG.vocab_size, (1, 17))
    with torch.no_grad():
        ours = model(ids).double()
    ref = reference_forward(model, ids)
    assert ours.shape == (1, 17, CFG.vocab_size)
    assert (ours - ref).abs().max() < 1e-5


def test_state_dict_keys_are_llamas():
    model = make_model(ModelConfig(vocab_size=50, hidden_size=32, num_layers=2, num_heads=4,
                                   tie_embeddings=False, max_seq_len=16))
    expected = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    for i in range(2):
        expected |= {f"model.layers.{i}.self_attn.{p}_proj.weight" for p in "qkvo"}
        expected |= {f"model.layers.{i}.mlp.{p}_proj.weight" for p in ("gate", "up", "down")}
        expected |= {f"model.layers.{i}.{n}_layernorm.weight" for n in ("input", "post_attention")}
    assert set(model.state_dict()) == expected


def test_tied_embeddings_share_one_tensor():
    model = make_model()
    assert model.lm_head.weight is model.model.embed_tokens.weight


@pytest.mark.parametrize("tied", [True, False])
def test_parameter_counts_match_the_module(tied):
    cfg = ModelConfig(vocab_size=100, hidden_size=48, num_layers=3, num_heads=6, num_kv_heads=2,
                      tie_embeddings=tied, max_seq_len=32)
    model = make_model(cfg)
    assert sum(parameter_counts(cfg).values()) == sum(p.numel() for p in model.parameters())


def test_seed_default_config_is_the_seed_table():
    cfg = ModelConfig()
    assert (cfg.hidden_size, cfg.num_layers, cfg.num_heads) == (512, 6, 8)


def test_kv_cache_prefill_and_decode_equal_full_forward():
    model = make_model()
    ids = torch.randint(0, CFG.vocab_size, (2, 24))
    with torch.no_grad():
        full = model(ids)
        cache = KVCache.empty(CFG, batch_size=2)
        steps = [model(ids[:, :10], cache)]
        steps += [model(ids[:, t : t + 1], cache) for t in range(10, 16)]
        steps.append(model(ids[:, 16:], cache))  # a multi-token chunk after a cached prefix
    assert cache.length == 24
    assert (torch.cat(steps, 1) - full).abs().max() <= 1e-5


def test_context_length_is_enforced():
    model = make_model()
    with pytest.raises(ValueError, match="context length"):
        model(torch.zeros(1, CFG.max_seq_len + 1, dtype=torch.long))


def test_rmsnorm_matches_definition():
    norm = RMSNorm(8, eps=1e-6)
    norm.weight.data = torch.linspace(0.5, 2, 8)
    x = torch.randn(3, 8, dtype=torch.float64)
    expected = norm.weight.double() * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    assert torch.allclose(norm(x.float()).double(), expected, atol=1e-6)


def test_rope_scores_depend_only_on_relative_position():
    cfg = ModelConfig(vocab_size=10, hidden_size=32, num_heads=2, max_seq_len=64)
    cos, sin = rope_tables(cfg)
    q, k = torch.randn(cfg.head_dim), torch.randn(cfg.head_dim)

    def score(m, n):
        qm = apply_rope(q.expand(1, 1, 1, -1), cos[m : m + 1], sin[m : m + 1])
        kn = apply_rope(k.expand(1, 1, 1, -1), cos[n : n + 1], sin[n : n + 1])
        return float((qm * kn).sum())

    assert score(5, 2) == pytest.approx(score(40, 37), abs=1e-4)
    assert score(5, 2) != pytest.approx(score(5, 4), abs=1e-3)


def test_lm_loss_sum_shifts_and_ignores_masked_labels():
    logits = torch.randn(2, 5, 7, dtype=torch.float64)
    labels = torch.tensor([[1, 2, -100, 4, 5], [0, -100, -100, 3, -100]])
    nll, count = lm_loss_sum(logits, labels)
    logp = torch.log_softmax(logits, -1)
    expected, n = 0.0, 0
    for b in range(2):
        for t in range(4):
            if labels[b, t + 1] != -100:
                expected -= float(logp[b, t, labels[b, t + 1]])
                n += 1
    assert count == n == 4
    assert float(nll) == pytest.approx(expected, rel=1e-6)


def test_gradients_flow_to_every_parameter():
    model = make_model().train()
    ids = torch.randint(0, CFG.vocab_size, (2, 12))
    nll, _ = lm_loss_sum(model(ids), ids)
    nll.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_matches_transformers_llama():
    import transformers  # a test dependency (requirements.txt): a missing install fails
    cfg = ModelConfig(vocab_size=97, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                      tie_embeddings=False, max_seq_len=64)
    model = make_model(cfg)
    hf_cfg = transformers.LlamaConfig(
        vocab_size=97, hidden_size=64, intermediate_size=cfg.mlp_size, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        rms_norm_eps=cfg.rms_norm_eps, rope_theta=cfg.rope_theta, tie_word_embeddings=False,
        attention_bias=False, mlp_bias=False,
    )
    hf = transformers.LlamaForCausalLM(hf_cfg).eval()
    hf.load_state_dict(model.state_dict())
    ids = torch.randint(0, 97, (2, 20))
    with torch.no_grad():
        assert (hf(ids).logits - model(ids)).abs().max() < 1e-4
