"""Logits processors against hand-computed float64 results and Hugging Face; generate's loop."""

import math

import pytest
import torch

from tinyllm_lib.config import ModelConfig
from tinyllm_lib.model import TinyLLM
from tinyllm_lib.sampling import (
    SamplingConfig,
    apply_repetition_penalty,
    apply_temperature,
    choose_next,
    generate,
    pick_token,
    process_logits,
    race_noise,
    top_k_candidates,
    top_k_filter,
    top_p_filter,
)

INF = math.inf
CFG = ModelConfig(
    vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, max_seq_len=48,
    tie_embeddings=False,
)
PROMPT = [5, 17, 3, 42, 8]


@pytest.fixture(scope="module")
def model() -> TinyLLM:
    """A tiny model in float64, so that cached and uncached logits agree to ~1e-15 and
    near-ties cannot flip an argmax. Weights 10x larger than at initialisation make its
    predictions less flat and its greedy output varied (with tied embeddings a random
    model just repeats its last token)."""
    torch.manual_seed(0)
    model = TinyLLM(CFG).double().eval()
    with torch.no_grad():
        for weight in model.parameters():
            if weight.dim() == 2:
                weight.mul_(10)
    return model


def f64(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def kept(logits: torch.Tensor) -> list[int]:
    return torch.nonzero(logits != -INF).flatten().tolist()


# ---------------------------------------------------------------- each processor by hand


def test_repetition_penalty_by_hand():
    logits = torch.stack([f64(2.0, -1.0, 0.5, 3.0), f64(2.0, -1.0, 0.5, 3.0)])
    prev = torch.tensor([[0, 1, 1], [3, 3, 3]])  # repeats are penalised once
    out = apply_repetition_penalty(logits, prev, 2.0)
    assert torch.equal(out, torch.stack([f64(1.0, -2.0, 0.5, 3.0), f64(2.0, -1.0, 0.5, 1.5)]))
    # penalty < 1 rewards repetition; ids beyond the vocabulary are ignored; 1-D works
    assert torch.equal(
        apply_repetition_penalty(f64(2.0, -1.0, 0.5), torch.tensor([1, 2, 99]), 0.5),
        f64(2.0, -0.5, 1.0),
    )
    with pytest.raises(ValueError, match="dimensions"):
        apply_repetition_penalty(logits, torch.tensor([1]), 2.0)


def test_temperature_by_hand():
    assert torch.equal(apply_temperature(f64(2.0, -1.0, 0.5), 0.5), f64(4.0, -2.0, 1.0))
    probs_cold = apply_temperature(f64(1.0, 0.0), 0.25).softmax(-1)
    probs_hot = apply_temperature(f64(1.0, 0.0), 4.0).softmax(-1)
    assert probs_cold[0] == pytest.approx(1 / (1 + math.exp(-4)))
    assert probs_hot[0] == pytest.approx(1 / (1 + math.exp(-0.25)))
    with pytest.raises(ValueError, match="greedy"):
        apply_temperature(f64(1.0), 0.0)


def test_top_k_by_hand():
    logits = f64(1.0, 3.0, 3.0, 2.0, 0.0)
    assert kept(top_k_filter(logits, 1)) == [1, 2]  # both tied maxima survive
    assert kept(top_k_filter(logits, 3)) == [1, 2, 3]
    assert torch.equal(top_k_filter(logits, 10), logits)
    out = top_k_filter(logits[None], 3)[0]
    assert out[3] == 2.0 and out[0] == -INF and out[4] == -INF
    with pytest.raises(ValueError, match="top_k"):
        top_k_filter(logits, 0)


def test_top_k_candidates_without_ties_keeps_exactly_k():
    logits = f64(1.0, 3.0, 3.0, 2.0, 0.0, 2.0)[None]
    values, ids = top_k_candidates(logits, 3)
    assert ids.tolist() == [[1, 2, 3, 5]] and values.tolist() == [[3.0, 3.0, 2.0, 2.0]]
    values, ids = top_k_candidates(logits, 3, keep_ties=False)
    assert ids.shape == (1, 3) and ids[0, :2].tolist() == [1, 2] and ids[0, 2] in (3, 5)
    assert ids[0].tolist() == sorted(ids[0].tolist())  # vocabulary order
    untied = f64(0.5, 3.0, 1.0, 2.0)[None]
    for keep_ties in (True, False):
        assert top_k_candidates(untied, 2, keep_ties)[1].tolist() == [[1, 3]]


def test_exponential_race_draws_with_the_softmax_probabilities():
    """40,000 races against float64 probabilities: every frequency within 0.01 (four
    standard deviations at p = 0.5), a removed token never, even where its draw is 0."""
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0], dtype=torch.float64)
    draws = 40_000
    values = probs.log().expand(draws, -1)
    ids = torch.arange(10, 15).expand(draws, -1)
    noise = race_noise(values.shape, torch.Generator().manual_seed(0), values.device)
    noise[:, 4] = 0.0
    picked = pick_token(values, ids, noise)
    frequencies = torch.bincount(picked[:, 0] - 10, minlength=5).double() / draws
    assert (frequencies - probs).abs().max() < 0.01 and frequencies[4] == 0
    assert pick_token(values[:1], ids[:1], None).item() == 10  # no noise: the argmax


def nucleus_by_hand(probs: list[float], p: float) -> list[int]:
    """Walk down from the most likely token; keep it while the tokens above it hold < p."""
    order = sorted(range(len(probs)), key=lambda i: -probs[i])
    kept_ids, mass_above = [], 0.0
    for i in order:
        if mass_above < p or not kept_ids:
            kept_ids.append(i)
        mass_above += probs[i]
    return sorted(kept_ids)


@pytest.mark.parametrize("p", [0.0, 0.3, 0.6, 0.7, 0.9, 0.97, 1.0])
def test_top_p_by_hand(p):
    probs = [0.15, 0.5, 0.05, 0.3]
    logits = torch.log(f64(*probs))
    assert kept(top_p_filter(logits, p)) == nucleus_by_hand(probs, p)
    out = top_p_filter(logits, p)
    assert torch.equal(out[out != -INF], logits[out != -INF])  # survivors unchanged


def test_top_p_boundary_and_ties():
    # Four equal logits: probabilities exactly 0.25, cumulative sums exact in binary.
    flat = torch.zeros(4, dtype=torch.float64)
    assert len(kept(top_p_filter(flat, 0.5))) == 2  # reaching p exactly is enough
    assert len(kept(top_p_filter(flat, 0.5 + 1e-9))) == 3
    assert len(kept(top_p_filter(flat, 0.5 - 1e-9))) == 2
    assert len(kept(top_p_filter(flat, 0.0))) == 1  # at least one token is kept
    # Ties are cut in vocabulary order, from the least likely end: the earlier ids go first.
    assert kept(top_p_filter(flat, 0.5)) == [2, 3]
    # Tokens already at -inf (probability 0) stay removed even at p = 1.
    assert kept(top_p_filter(f64(-INF, 1.0, 0.0), 1.0)) == [1, 2]
    with pytest.raises(ValueError, match="top_p"):
        top_p_filter(flat, 1.5)


def test_process_logits_order():
    torch.manual_seed(1)
    logits = torch.randn(3, 40, dtype=torch.float64)
    prev = torch.randint(0, 40, (3, 7))
    sampling = SamplingConfig(temperature=1.7, top_k=12, top_p=0.6, repetition_penalty=1.3)
    expected = top_p_filter(
        top_k_filter(apply_temperature(apply_repetition_penalty(logits, prev, 1.3), 1.7), 12),
        0.6,
    )
    assert torch.equal(process_logits(logits, prev, sampling), expected)
    # The order matters: top-p before the temperature keeps a different set here.
    swapped = apply_temperature(top_p_filter(apply_repetition_penalty(logits, prev, 1.3), 0.6), 1.7)
    assert not torch.equal(expected == -INF, top_k_filter(swapped, 12) == -INF)
    # Greedy: only the penalty applies.
    greedy = SamplingConfig(temperature=0, repetition_penalty=1.3)
    penalised = apply_repetition_penalty(logits, prev, 1.3)
    assert torch.equal(process_logits(logits, prev, greedy), penalised)


@pytest.mark.parametrize("seed", range(6))
def test_candidates_give_what_the_whole_vocabulary_gives(seed):
    """Top-p over top-k's candidates keeps what it keeps over the whole vocabulary, ties
    and -inf included, and a draw never leaves the kept set."""
    logits = tied_logits(seed)
    prev = torch.randint(0, 60, (4, 9), generator=torch.Generator().manual_seed(seed))
    for k, p in [(1, 0.5), (5, 0.3), (12, 0.9), (20, 1.0), (50, 0.95), (80, 0.6)]:
        sampling = SamplingConfig(temperature=0.7, top_k=k, top_p=p, repetition_penalty=1.2)
        whole = top_p_filter(top_k_filter(
            apply_temperature(apply_repetition_penalty(logits, prev, 1.2), 0.7), k), p)
        assert torch.equal(process_logits(logits, prev, sampling), whole)
        g = torch.Generator().manual_seed(seed)
        for _ in range(20):
            token = choose_next(logits, prev, sampling, g)
            assert (whole.gather(-1, token) > -INF).all()


# ------------------------------------------------------------------- against Hugging Face


def tied_logits(seed: int) -> torch.Tensor:
    """Random logits rounded to one decimal, so many values tie, some at -inf."""
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(4, 50, generator=g) * 2).round(decimals=1)
    logits[0, :10] = 0.0  # a block of ties
    logits[1, torch.randperm(50, generator=g)[:5]] = -INF
    return logits


@pytest.mark.parametrize("seed", range(6))
def test_processors_match_hugging_face(seed):
    from transformers.generation import logits_process as lp
    logits = tied_logits(seed)
    prev = torch.randint(0, 60, (4, 9), generator=torch.Generator().manual_seed(seed))
    for penalty in (0.7, 1.3, 2.0):
        hf = lp.RepetitionPenaltyLogitsProcessor(penalty)(prev, logits.clone())
        assert torch.equal(apply_repetition_penalty(logits, prev, penalty), hf)
    for t in (0.3, 1.0, 1.9):
        hf = lp.TemperatureLogitsWarper(t)(prev, logits)
        assert torch.equal(apply_temperature(logits, t), hf)
    for k in (1, 3, 10, 49, 50, 80):
        assert torch.equal(top_k_filter(logits, k), lp.TopKLogitsWarper(k)(prev, logits))
    # Top-p on ties: which of several tied tokens at the boundary goes is torch.sort's
    # unspecified order in Hugging Face and vocabulary order here (test_top_p_boundary_and_
    # ties), so the comparison uses the same logits with the ties broken.
    logits = logits + torch.arange(50) * 1e-4
    for p in (0.0, 0.1, 0.5, 0.8, 0.9, 0.95, 0.999, 1.0):
        assert torch.equal(top_p_filter(logits, p), lp.TopPLogitsWarper(p)(prev, logits))
    chain = lp.LogitsProcessorList([
        lp.RepetitionPenaltyLogitsProcessor(1.2),
        lp.TemperatureLogitsWarper(0.7),
        lp.TopKLogitsWarper(20),
        lp.TopPLogitsWarper(0.9),
    ])
    sampling = SamplingConfig(temperature=0.7, top_k=20, top_p=0.9, repetition_penalty=1.2)
    assert torch.equal(process_logits(logits, prev, sampling), chain(prev, logits.clone()))


# ----------------------------------------------------------------------------- generate


GREEDY = SamplingConfig(temperature=0)


def reference_decode(model, prompt, steps, sampling=GREEDY):
    """Greedy decoding with a full forward pass over the whole sequence at every step."""
    ids = list(prompt)
    for _ in range(steps):
        with torch.no_grad():
            logits = model(torch.tensor([ids]))[:, -1]
        ids.append(int(process_logits(logits, torch.tensor([ids]), sampling).argmax()))
    return ids[len(prompt):]


def test_greedy_is_argmax_of_full_forward(model):
    out = list(generate(model, PROMPT, temperature=0, max_new_tokens=20))
    assert out == reference_decode(model, PROMPT, 20)
    assert len(set(out)) > 1  # a non-trivial sequence, so the check has teeth
    penalised = list(generate(model, PROMPT, temperature=0, repetition_penalty=1.5,
                              max_new_tokens=20))
    sampling = SamplingConfig(temperature=0, repetition_penalty=1.5)
    assert penalised == reference_decode(model, PROMPT, 20, sampling)
    assert penalised != out


def test_cache_and_no_cache_agree(model):
    with_cache = list(generate(model, PROMPT, temperature=0, max_new_tokens=30))
    without = list(generate(model, PROMPT, temperature=0, max_new_tokens=30, use_cache=False))
    assert with_cache == without and len(with_cache) == 30
    seeded = dict(temperature=1.0, top_k=None, top_p=1.0, seed=7, max_new_tokens=30)
    assert list(generate(model, PROMPT, **seeded)) == list(
        generate(model, PROMPT, use_cache=False, **seeded)
    )


def test_compiled_decode_step_gives_the_same_tokens(model):
    """torch.compile'd decode steps: the same greedy and seeded tokens as eager ones."""
    seeded = dict(temperature=0.8, top_k=10, top_p=0.9, repetition_penalty=1.2, seed=3,
                  max_new_tokens=30)
    for options in (dict(temperature=0, max_new_tokens=30), seeded):
        eager = list(generate(model, PROMPT, **options))
        assert list(generate(model, PROMPT, compile_step=True, **options)) == eager
    with pytest.raises(ValueError, match="compile_step needs use_cache"):
        generate(model, PROMPT, compile_step=True, use_cache=False)


def test_seeded_sampling_is_reproducible(model):
    config = SamplingConfig(temperature=1.0, top_k=None, top_p=1.0, max_new_tokens=25)
    a = list(generate(model, PROMPT, config, seed=1))
    b = list(generate(model, PROMPT, config, seed=1))
    c = list(generate(model, PROMPT, config, seed=2))
    assert a == b and a != c
    g = torch.Generator().manual_seed(1)
    assert list(generate(model, PROMPT, config, generator=g)) == a


def test_samples_come_from_the_filtered_set(model):
    out = list(generate(model, PROMPT, temperature=1.0, top_k=3, top_p=1.0, seed=0,
                        max_new_tokens=20))
    ids = list(PROMPT)
    for token in out:
        with torch.no_grad():
            top3 = model(torch.tensor([ids]))[0, -1].topk(3).indices.tolist()
        assert token in top3
        ids.append(token)
    # top_k = 1 leaves nothing to chance: it is greedy decoding.
    assert list(generate(model, PROMPT, temperature=1.0, top_k=1, seed=3, max_new_tokens=20)) \
        == reference_decode(model, PROMPT, 20)


def test_stop_ids_end_generation_without_being_yielded(model):
    full = list(generate(model, PROMPT, temperature=0, max_new_tokens=20))
    stop = full[6]
    first = full.index(stop)
    assert list(generate(model, PROMPT, temperature=0, max_new_tokens=20, stop_ids=[stop])) \
        == full[:first]
    assert list(generate(model, PROMPT, temperature=0, max_new_tokens=4)) == full[:4]


@pytest.mark.parametrize("use_cache", [True, False])
def test_context_limit(model, use_cache):
    limit = CFG.max_seq_len
    long_prompt = [1] * (limit - 3)
    out = list(generate(model, long_prompt, temperature=0, max_new_tokens=100, use_cache=use_cache))
    assert len(out) == 3
    assert list(generate(model, [1] * limit, temperature=0, use_cache=use_cache)) == []
    with pytest.raises(ValueError, match=rf"{limit + 1} tokens.*{limit}"):
        generate(model, [1] * (limit + 1), use_cache=use_cache)  # raises at the call


def test_generate_restores_modes_and_checks_arguments(model):
    model.train()
    stream = generate(model, PROMPT, temperature=0, max_new_tokens=5)
    next(stream)
    # Between steps, the caller's code is not in inference mode.
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    list(stream)
    assert model.training
    model.eval()
    with pytest.raises(TypeError, match="temprature"):
        generate(model, PROMPT, temprature=0.5)
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=1.5)
    with pytest.raises(ValueError, match="empty"):
        generate(model, [])
    with pytest.raises(ValueError, match="one sequence"):
        generate(model, [[1, 2], [3, 4]])
