"""The batching engine and the OpenAI-compatible server, on the shipped base.

The server runs for real (uvicorn on a free loopback port, in a background thread) and is
called with the official ``openai`` client; raw bodies the client cannot send go through
``httpx``.
"""

import json
import logging
import time
from types import SimpleNamespace

import httpx
import numpy as np
import openai
import pytest
import torch

from tinyllm_lib.chat import encode_chat
from tinyllm_lib.checkpoint import load_pretrained
from tinyllm_lib.cli import load_model, main
from tinyllm_lib.config import BASE_DIR, DATA_DIR
from tinyllm_lib.engine import Engine, EngineBusy, Request, collect, held_back, wait
from tinyllm_lib.loadtest import LoadResult, Reply, run_load
from tinyllm_lib.lora import LoRALinear
from tinyllm_lib.model import KVCache
from tinyllm_lib.sampling import SamplingConfig
from tinyllm_lib.serve import Settings, start_in_background, start_process

KEY = "test-key"
NAME = "tinyllm-base"
SFT_ADAPTER = DATA_DIR / "sft_adapter"
GREEDY = SamplingConfig(temperature=0, max_new_tokens=24)


@pytest.fixture(scope="module")
def base():
    return load_pretrained(BASE_DIR)


def chat_ids(tokenizer, question):
    messages = [{"role": "user", "content": question}]
    return encode_chat(tokenizer, messages, add_generation_prompt=True).input_ids


# --------------------------------------------------------------------------- the engine


def test_held_back_is_the_longest_stop_prefix_at_the_end():
    assert held_back("the end", ["end."]) == 3
    assert held_back("abc", ["x", "cd", "bcz"]) == 2
    assert held_back("abc", []) == 0


def test_a_row_of_a_decode_step_does_not_depend_on_the_other_rows(base):
    """With the step's shape fixed, a row's logits are the same bits whatever the other
    rows hold (a different batch *size* would round them differently: the reason the
    engine always runs max_batch rows)."""
    model, _ = base
    torch.manual_seed(0)
    lengths = torch.randint(3, 40, (4,))
    logits = []
    for other_tokens in (1, 2):
        cache = KVCache.empty(model.config, 4)
        with torch.inference_mode():
            for row, length in enumerate(lengths.tolist()):
                prompt = torch.arange(length)[None] * (1 if row == 0 else other_tokens) % 4000
                model(prompt, cache.rows(row, row + 1))
            last = torch.tensor([[7], [other_tokens], [9], [other_tokens * 3]])
            logits.append(model(last, cache, lengths[:, None])[0])
    assert torch.equal(logits[0], logits[1])


@pytest.mark.parametrize("batch_invariant", [True, False])
def test_16_concurrent_greedy_requests_equal_each_alone(base, batch_invariant):
    """Chat prompts and raw text, short and long replies: rows join and leave while others
    run (a leaving row's place is taken by the last), and every reply is unchanged.

    Without ``batch_invariant`` the logits may differ in the last bits (other kernels for
    other batch sizes); on these prompts no greedy token is that close to a tie."""
    model, tokenizer = base
    prompts = [chat_ids(tokenizer, f"What is {a} + {b}?") for a in range(2) for b in range(4)]
    prompts += [tokenizer.encode(f"Ada Lane lives in {'Stone' * k}") for k in range(1, 9)]
    samplings = [SamplingConfig(temperature=0, max_new_tokens=4 + 5 * (i % 7))
                 for i in range(16)]
    engine = Engine(model, tokenizer, max_batch=16, batch_invariant=batch_invariant).start()
    try:
        alone = [wait(collect(engine, p, s)[1]) for p, s in zip(prompts, samplings, strict=True)]
        queues = [collect(engine, p, s)[1] for p, s in zip(prompts, samplings, strict=True)]
        together = [wait(q) for q in queues]
    finally:
        engine.stop()
    assert [text for text, _ in together] == [text for text, _ in alone]
    assert [u.completion_tokens for _, u in together] == [u.completion_tokens for _, u in alone]
    assert sum(u.finish_reason == "length" for _, u in alone) >= 8  # the raw-text ones
    assert all(text for text, _ in alone)


def test_seeded_sampling_is_the_same_alone_or_in_a_batch(base):
    model, tokenizer = base
    prompt = tokenizer.encode("Bo Chen is a")
    seeded = SamplingConfig(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=20, seed=5)
    engine = Engine(model, tokenizer, max_batch=8).start()
    try:
        alone = wait(collect(engine, prompt, seeded)[1])[0]
        others = [collect(engine, tokenizer.encode(f"{i} plus"), SamplingConfig(seed=i))[1]
                  for i in range(6)]
        batched = wait(collect(engine, prompt, seeded)[1])[0]
        for q in others:
            wait(q)
    finally:
        engine.stop()
    assert batched == alone and len(alone) > 10


def test_a_short_request_finishes_before_a_long_one_started_earlier(base):
    model, tokenizer = base
    engine = Engine(model, tokenizer, max_batch=4).start()
    order = []
    try:
        long = Request(tokenizer.encode("Once"), SamplingConfig(temperature=0, max_new_tokens=150),
                       lambda u: u.finish_reason and order.append("long"))
        engine.submit(long)
        time.sleep(0.05)
        short = Request(tokenizer.encode("Two"), SamplingConfig(temperature=0, max_new_tokens=3),
                        lambda u: u.finish_reason and order.append("short"))
        engine.submit(short)
        deadline = time.time() + 30
        while len(order) < 2 and time.time() < deadline:
            time.sleep(0.01)
    finally:
        engine.stop()
    assert order == ["short", "long"]


def test_a_full_queue_refuses_and_a_cancelled_request_frees_its_row(base):
    model, tokenizer = base
    engine = Engine(model, tokenizer, max_batch=2, max_queue=1)
    engine.submit(Request([1, 2], GREEDY, lambda u: None))
    with pytest.raises(EngineBusy):
        engine.submit(Request([1, 2], GREEDY, lambda u: None))
    with pytest.raises(ValueError, match="256"):
        engine.submit(Request([1] * 256, GREEDY, lambda u: None))
    engine.waiting.get()
    request, updates = collect(engine, tokenizer.encode("Once"),
                               SamplingConfig(temperature=0, max_new_tokens=200))
    engine.start()
    try:
        updates.get(timeout=30)
        request.cancel()
        text, last = wait(updates)
        assert last.finish_reason == "cancelled" and last.completion_tokens < 200
        assert engine.running == []
    finally:
        engine.stop()


# --------------------------------------------------------------------------- the server


@pytest.fixture(scope="module")
def server(base):
    model, tokenizer = base
    engine = Engine(model, tokenizer, max_batch=4, max_queue=8)
    settings = Settings(NAME, api_key=KEY, max_tokens_cap=200, max_body_bytes=64 * 1024)
    running = start_in_background(engine, settings)
    yield SimpleNamespace(url=running.url, engine=engine, tokenizer=tokenizer, model=model,
                          client=openai.OpenAI(base_url=running.url, api_key=KEY,
                                               max_retries=0))
    running.stop()
    assert not running.thread.is_alive()


def ask(server, question="What is 2 + 3?", **options):
    options.setdefault("temperature", 0)
    return server.client.chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": question}], **options)


def post(server, path, body, key=KEY, **kwargs):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    content = body if isinstance(body, bytes | str) else json.dumps(body)
    kwargs.setdefault("timeout", 30)
    return httpx.post(server.url + path, content=content, headers=headers, **kwargs)


def test_chat_completion_matches_the_engine_and_counts_usage(server):
    reply = ask(server, max_tokens=24)
    prompt = chat_ids(server.tokenizer, "What is 2 + 3?")
    direct, last = wait(collect(server.engine, prompt, GREEDY)[1])
    assert reply.object == "chat.completion" and reply.model == NAME
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == direct
    assert reply.choices[0].finish_reason == last.finish_reason
    assert reply.usage.prompt_tokens == len(prompt)
    assert reply.usage.completion_tokens == last.completion_tokens
    assert reply.usage.total_tokens == len(prompt) + last.completion_tokens


def test_max_tokens_ends_with_length(server):
    reply = server.client.completions.create(model=NAME, prompt="Ada Lane lives in",
                                             temperature=0, max_tokens=3)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 3
    assert reply.usage.prompt_tokens == len(server.tokenizer.encode("Ada Lane lives in"))
    reply = ask(server, "Tell me about Ada Lane.", max_completion_tokens=2)
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 2


def test_ignore_eos_decodes_past_the_end_of_the_turn_to_max_tokens(server):
    natural = ask(server, max_tokens=40)
    assert natural.choices[0].finish_reason == "stop"  # it ends well before 40 tokens
    assert natural.usage.completion_tokens < 30
    longer = ask(server, max_tokens=40, extra_body={"ignore_eos": True})
    assert longer.choices[0].finish_reason == "length"
    assert longer.usage.completion_tokens == 40


def test_a_load_test_times_every_reply_and_gets_the_replies_alone(server):
    questions = [f"What is {a} + {b}?" for a, b in [(2, 3), (10, 4), (7, 7), (1, 9), (6, 2)]]
    alone = [ask(server, q, max_tokens=24).choices[0].message.content for q in questions]
    result = run_load(server.client, NAME, questions, clients=3, temperature=0, max_tokens=24)
    assert [r.prompt for r in result.replies] == questions
    assert [r.text for r in result.replies] == alone
    assert all(0 < r.first_token_s <= r.total_s <= result.wall_s for r in result.replies)
    assert all(r.finish_reason == "stop" and r.completion_tokens > 0 for r in result.replies)
    tokens = sum(r.completion_tokens for r in result.replies)
    assert result.tokens_per_s == pytest.approx(tokens / result.wall_s)


def test_load_percentiles_are_numpy_linear_percentiles():
    times = np.random.default_rng(0).uniform(0.001, 0.5, size=37)
    replies = [Reply("q", "a", 1, float(t), 1.0, "stop") for t in times]
    result = LoadResult(clients=4, replies=replies, wall_s=2.0)
    for q in (50, 95):
        assert result.first_token_ms(q) == pytest.approx(np.percentile(times * 1000, q))
    assert LoadResult(1, replies[:1], 1.0).first_token_ms(95) == pytest.approx(times[0] * 1000)


def test_streamed_chat_equals_the_whole_reply(server):
    whole = ask(server, max_tokens=24).choices[0]
    stream = ask(server, max_tokens=24, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.message.content
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert reasons[-1] == whole.finish_reason and all(r is None for r in reasons[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    raw = post(server, "/chat/completions", {"model": NAME, "stream": True, "max_tokens": 4,
                                             "messages": [{"role": "user", "content": "Hi"}]})
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.text.endswith("data: [DONE]\n\n")


def test_stop_strings_cut_the_reply(server):
    complete = server.client.completions.create
    full = complete(model=NAME, prompt="Bo Chen is a", temperature=0, max_tokens=30)
    text = full.choices[0].text
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    cut = complete(model=NAME, prompt="Bo Chen is a", temperature=0, max_tokens=30, stop=[stop])
    assert cut.choices[0].text == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = complete(model=NAME, prompt="Bo Chen is a", temperature=0, max_tokens=30,
                        stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == cut.choices[0].text


def test_a_seed_reproduces_a_sampled_reply_and_n_gives_several(server):
    def sample(seed, n=1):
        return server.client.completions.create(model=NAME, prompt="Bo Chen", n=n, seed=seed,
                                                temperature=1.0, max_tokens=20)

    first, again, other = sample(3), sample(3), sample(4)
    assert first.choices[0].text == again.choices[0].text
    assert first.choices[0].text != other.choices[0].text
    several = sample(3, n=3)
    assert [c.index for c in several.choices] == [0, 1, 2]
    # choice i uses seed + i
    singles = [first, other, sample(5)]
    assert [c.text for c in several.choices] == [s.choices[0].text for s in singles]
    assert several.usage.completion_tokens == sum(s.usage.completion_tokens for s in singles)
    chat = ask(server, n=2, seed=1, temperature=1.0, max_tokens=10)
    assert [c.index for c in chat.choices] == [0, 1]
    chunks = [c for c in ask(server, n=2, seed=1, temperature=1.0, max_tokens=10, stream=True)]
    for choice in chat.choices:
        mine = [c.choices[0] for c in chunks if c.choices[0].index == choice.index]
        assert "".join(c.delta.content or "" for c in mine) == choice.message.content
        assert mine[-1].finish_reason == choice.finish_reason


def test_nulls_mean_defaults_and_content_may_come_in_parts(server):
    parts = [{"type": "text", "text": "What is "}, {"type": "text", "text": "2 + 3?"}]
    body = {"model": NAME, "messages": [{"role": "user", "content": parts}], "temperature": 0,
            "max_tokens": 24, "top_p": None, "stop": None, "seed": None, "n": None}
    reply = post(server, "/chat/completions", body).json()
    assert reply["choices"][0]["message"]["content"] == ask(
        server, max_tokens=24).choices[0].message.content


def test_models_health_and_one_log_line_per_request(server, caplog):
    caplog.set_level(logging.INFO, logger="tinyllm.serve")
    assert [m.id for m in server.client.models.list()] == [NAME]
    health = httpx.get(server.url.removesuffix("/v1") + "/health").json()
    assert health["status"] == "ok" and health["running"] == 0

    def these_lines():  # an earlier test's streamed reply may log its line during this one
        return [line.split()[:3] for line in (r.getMessage() for r in caplog.records
                                              if r.name == "tinyllm.serve")
                if line.split()[0] == "GET"]

    deadline = time.time() + 5
    while len(these_lines()) < 2 and time.time() < deadline:
        time.sleep(0.01)
    assert these_lines() == [["GET", "/v1/models", "200"], ["GET", "/health", "200"]]


def error_of(response, status):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def test_bad_requests_get_openai_shaped_400s(server):
    hello = [{"role": "user", "content": "Hi"}]
    assert "JSON" in error_of(post(server, "/chat/completions", b"{not json"), 400)["message"]
    error = error_of(post(server, "/chat/completions",
                          {"model": NAME, "messages": hello, "temperature": "hot"}), 400)
    assert error["param"] == "temperature"
    error = error_of(post(server, "/chat/completions", {"model": NAME, "messages": "Hi"}), 400)
    assert error["param"] == "messages"
    error = error_of(post(server, "/chat/completions", {"model": NAME, "messages": [
        {"role": "wizard", "content": "Hi"}]}), 400)
    assert "wizard" in error["message"]
    error = error_of(post(server, "/chat/completions", {"messages": hello}), 400)
    assert error["param"] == "model"
    prompt_len = len(chat_ids(server.tokenizer, "Hi"))
    error = error_of(post(server, "/chat/completions",
                          {"model": NAME, "messages": hello, "max_tokens": 250}), 400)
    assert "256" in error["message"] and "250" in error["message"]
    assert str(prompt_len) in error["message"] and error["code"] == "context_length_exceeded"
    error = error_of(post(server, "/completions", {"model": NAME, "prompt": "x",
                                                   "max_tokens": 201}), 400)
    assert "200" in error["message"]  # the server's --max-tokens-cap
    with pytest.raises(openai.BadRequestError):
        ask(server, temperature=5)
    assert ask(server, max_tokens=2).choices[0].message.content is not None  # still serving


def test_a_body_over_the_limit_is_413(server):
    huge = {"model": NAME, "messages": [{"role": "user", "content": "x" * 100_000}]}
    assert error_of(post(server, "/chat/completions", huge), 413)["code"] == "request_too_large"


def test_an_unknown_model_is_404(server):
    with pytest.raises(openai.NotFoundError, match="gpt-9"):
        server.client.chat.completions.create(
            model="gpt-9", messages=[{"role": "user", "content": "Hi"}])


def test_the_api_key_is_required(server):
    wrong = openai.OpenAI(base_url=server.url, api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    body = {"model": NAME, "messages": [{"role": "user", "content": "Hi"}]}
    assert error_of(post(server, "/chat/completions", body, key=None), 401)["code"] == (
        "invalid_api_key")


def test_a_full_queue_is_503_with_retry_after(server, monkeypatch):
    def busy(request):
        raise EngineBusy("8 requests are already waiting")

    monkeypatch.setattr(server.engine, "submit", busy)
    response = post(server, "/chat/completions",
                    {"model": NAME, "messages": [{"role": "user", "content": "Hi"}]})
    assert error_of(response, 503)["type"] == "server_error"
    assert response.headers["retry-after"] == "1"


def test_a_client_leaving_mid_stream_frees_its_row(server):
    engine = server.engine
    cancelled = engine.finished["cancelled"]
    body = {"model": NAME, "prompt": "Once", "max_tokens": 200, "temperature": 0,
            "stream": True}
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.stream("POST", server.url + "/completions", json=body, headers=headers,
                      timeout=30) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
    deadline = time.time() + 20
    while (engine.running or engine.finished["cancelled"] == cancelled) and (
            time.time() < deadline):
        time.sleep(0.02)
    assert engine.finished["cancelled"] == cancelled + 1, (engine.finished, engine.running,
                                                           engine.waiting.qsize(),
                                                           engine._thread)
    assert engine.running == []


def test_the_serve_command_builds_the_engine_and_settings(monkeypatch):
    started = {}

    def fake_serve(engine, settings, host, port):
        started.update(engine=engine, settings=settings, host=host, port=port)

    monkeypatch.setattr("tinyllm_lib.serve.serve", fake_serve)
    assert main(["serve", "--port", "8123", "--api-key", "k", "--max-batch", "3",
                 "--max-tokens-cap", "50"]) == 0
    assert (started["host"], started["port"]) == ("127.0.0.1", 8123)
    assert started["engine"].max_batch == 3 and started["engine"].cache.keys[0].shape[0] == 3
    assert started["engine"].context == 256  # the base's context, under the 1024 default
    assert started["settings"] == Settings("base", api_key="k", max_tokens_cap=50)
    main(["serve", "--max-len", "100"])
    assert started["engine"].context == 100 and started["engine"].cache.capacity == 100
    assert started["engine"].batch_invariant
    main(["serve", "--adapter", str(SFT_ADAPTER), "--no-batch-invariant"])
    served = started["engine"].model
    assert not started["engine"].batch_invariant
    assert not any(isinstance(m, LoRALinear) for m in served.modules())  # merged
    adapted, _ = load_model(BASE_DIR, SFT_ADAPTER)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, served.config.vocab_size, (2, 30), generator=generator)
    with torch.no_grad():
        torch.testing.assert_close(served(ids), adapted(ids), atol=1e-4, rtol=0)


def test_the_server_as_a_process_answers_logs_and_stops_on_ctrl_c():
    server = start_process(["--adapter", str(SFT_ADAPTER), "--max-batch", "2"])
    try:
        client = openai.OpenAI(base_url=server.url, api_key="none", max_retries=0)
        reply = client.chat.completions.create(
            model="base", messages=[{"role": "user", "content": "What is 12 + 7?"}],
            temperature=0, max_tokens=8)
        assert reply.choices[0].message.content == "19"
        assert any("POST /v1/chat/completions 200" in line for line in server.log_lines())
    finally:
        assert server.stop() == 0  # SIGINT: the engine's loop ends, uvicorn finishes


def test_a_client_leaving_before_a_whole_reply_frees_its_row(server):
    engine = server.engine
    cancelled = engine.finished["cancelled"]
    body = {"model": NAME, "prompt": "Once", "max_tokens": 200, "temperature": 0}
    with pytest.raises(httpx.ReadTimeout):
        post(server, "/completions", body, timeout=0.2)
    deadline = time.time() + 20
    while engine.finished["cancelled"] == cancelled and time.time() < deadline:
        time.sleep(0.02)
    assert engine.finished["cancelled"] == cancelled + 1
