"""The playground's computations against hand-written references; its widgets react."""

import dataclasses
import html

import pytest
import torch

from tinyllm_lib.chat import EncodedChat, Message, encode_chat
from tinyllm_lib.config import PRESETS
from tinyllm_lib.model import TinyLLM
from tinyllm_lib.playground import (
    ChatWidget,
    SamplingPlayground,
    conversation_html,
    generate_text,
    next_token_table,
    token_text,
    tokens_html,
)
from tinyllm_lib.sampling import SamplingConfig, reply
from tinyllm_lib.tokenizer import Tokenizer

TEXTS = [
    "the cat sat on the mat. the dog sat on the log.",
    "What is 12 + 7? It is 19. 猫坐在垫子上。",
    "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\nhi there<|im_end|>\n",
] * 3
PROMPT = "<|im_start|>user\nthe cat sat on<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.train(TEXTS, 320)


@pytest.fixture(scope="module")
def model(tokenizer: Tokenizer) -> TinyLLM:
    """A random test-preset model; weights scaled up so its predictions are not flat."""
    torch.manual_seed(0)
    config = dataclasses.replace(PRESETS["test"], vocab_size=tokenizer.vocab_size)
    model = TinyLLM(config).eval()
    with torch.no_grad():
        for weight in model.parameters():
            if weight.dim() == 2:
                weight.mul_(8)
    return model


def reference_distribution(model, ids, temperature, penalty):
    """softmax of penalised, tempered logits, written out in float64."""
    with torch.no_grad():
        logits = model(torch.tensor([ids]))[0, -1].double()
    for token in set(ids):
        value = logits[token]
        logits[token] = value * penalty if value < 0 else value / penalty
    return torch.softmax(logits / temperature, dim=-1)


def greedy_by_hand(model, ids, steps, stop_ids):
    """Greedy decoding by full forward passes, without generate or a cache."""
    out = []
    ids = list(ids)
    for _ in range(steps):
        with torch.no_grad():
            token = int(model(torch.tensor([ids]))[0, -1].argmax())
        if token in stop_ids:
            break
        out.append(token)
        ids.append(token)
    return out


# ------------------------------------------------------------------ display


def test_token_text_shows_whitespace_and_partial_bytes(tokenizer):
    space_id = tokenizer.encode(" ")[0]
    newline_id = tokenizer.encode("\n")[0]
    assert token_text(tokenizer, space_id) == "␣"
    assert token_text(tokenizer, newline_id) == "↵"
    first_byte_of_cat = "猫".encode()[0]  # a byte id is its value
    assert token_text(tokenizer, first_byte_of_cat) == f"\\x{first_byte_of_cat:x}"
    assert token_text(tokenizer, tokenizer.im_end_id) == "<|im_end|>"


def test_tokens_html_boxes_every_token_and_colours_the_labels(tokenizer):
    messages = [Message(role="user", content="a <b> c"), Message(role="assistant", content="ok")]
    encoded = encode_chat(tokenizer, messages)
    page = tokens_html(tokenizer, encoded)
    assert page.count('title="id ') == len(encoded.input_ids)
    trained = sum(label != -100 for label in encoded.labels)
    assert page.count("background:#b7e4c7;font-weight") == trained > 0
    assert "&lt;|im_end|&gt;" in page and "<|" not in page  # token text is escaped
    assert page.count("<br>") == sum(
        tokenizer.id_to_token_bytes(t).endswith(b"\n") for t in encoded.input_ids
    )


def test_tokens_html_needs_matching_lengths(tokenizer):
    with pytest.raises(ValueError):
        tokens_html(tokenizer, EncodedChat(input_ids=[1, 2], labels=[-100]))


# ------------------------------------------------------------- next-token table


def test_table_probabilities_match_float64_reference(model, tokenizer):
    sampling = SamplingConfig(temperature=1.7, top_k=None, top_p=1.0, repetition_penalty=1.3)
    rows = next_token_table(model, tokenizer, PROMPT, sampling, top=10)
    ids = tokenizer.encode(PROMPT, allowed_special="all")
    reference = reference_distribution(model, ids, 1.7, 1.3)
    expected = reference.argsort(descending=True)[:10].tolist()
    assert [row.token_id for row in rows] == expected
    for row in rows:
        assert row.probability == pytest.approx(float(reference[row.token_id]), abs=1e-6)
        assert row.kept and row.sample_probability == pytest.approx(row.probability, abs=1e-6)
        assert row.text == token_text(tokenizer, row.token_id)


def test_top_k_keeps_the_k_most_likely(model, tokenizer):
    sampling = SamplingConfig(temperature=0.8, top_k=3, top_p=1.0)
    rows = next_token_table(model, tokenizer, PROMPT, sampling)
    assert [row.kept for row in rows] == [True] * 3 + [False] * 7
    # probability is the distribution before truncation, removed tokens included
    ids = tokenizer.encode(PROMPT, allowed_special="all")
    reference = reference_distribution(model, ids, 0.8, 1.0)
    for row in rows:
        assert row.probability == pytest.approx(float(reference[row.token_id]), abs=1e-6)
    kept_mass = sum(row.probability for row in rows[:3])
    for row in rows:
        expected = row.probability / kept_mass if row.kept else 0.0
        assert row.sample_probability == pytest.approx(expected, rel=1e-5)


def test_top_p_keeps_the_smallest_set_reaching_p(model, tokenizer):
    sampling = SamplingConfig(temperature=1.0, top_k=None, top_p=0.5)
    rows = next_token_table(model, tokenizer, PROMPT, sampling, top=50)
    reference = reference_distribution(
        model, tokenizer.encode(PROMPT, allowed_special="all"), 1.0, 1.0
    )
    cumulative = reference.sort(descending=True).values.cumsum(0)
    needed = int((cumulative < 0.5).sum()) + 1
    assert abs(float(cumulative[needed - 1]) - 0.5) > 1e-4  # not a knife-edge case
    assert [row.kept for row in rows] == [True] * needed + [False] * (50 - needed)


def test_greedy_keeps_only_the_argmax(model, tokenizer):
    rows = next_token_table(model, tokenizer, PROMPT, SamplingConfig(temperature=0.0))
    reference = reference_distribution(
        model, tokenizer.encode(PROMPT, allowed_special="all"), 1.0, 1.0
    )
    assert rows[0].token_id == int(reference.argmax())
    assert [row.kept for row in rows] == [True] + [False] * 9
    assert rows[0].sample_probability == 1.0
    assert rows[0].probability == pytest.approx(float(reference.max()), abs=1e-6)


def test_table_rejects_prompts_it_cannot_score(model, tokenizer):
    with pytest.raises(ValueError, match="context length"):
        next_token_table(model, tokenizer, "cat " * 200, SamplingConfig())
    with pytest.raises(ValueError, match="empty"):
        next_token_table(model, tokenizer, "", SamplingConfig())
    with pytest.raises(ValueError, match="top"):
        next_token_table(model, tokenizer, PROMPT, SamplingConfig(), top=0)


# ------------------------------------------------------------------ generation


def test_generate_text_is_greedy_decoding_at_temperature_zero(model, tokenizer):
    stops = {tokenizer.im_end_id, tokenizer.eos_id}
    ids = tokenizer.encode(PROMPT, allowed_special="all")
    expected = tokenizer.decode(greedy_by_hand(model, ids, 12, stops))
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=12)
    assert generate_text(model, tokenizer, PROMPT, sampling) == expected


def test_generate_text_with_a_seed_is_reproducible(model, tokenizer):
    sampling = SamplingConfig(temperature=1.5, top_k=None, top_p=1.0, max_new_tokens=20, seed=3)
    texts = {generate_text(model, tokenizer, PROMPT, sampling) for _ in range(2)}
    assert len(texts) == 1


def test_reply_answers_the_chatml_prompt(model, tokenizer):
    messages = [Message(role="user", content="the cat"), Message(role="assistant", content="sat"),
                Message(role="user", content="on the")]
    prompt = encode_chat(tokenizer, messages, add_generation_prompt=True).input_ids
    stops = {tokenizer.im_end_id, tokenizer.eos_id}
    expected = tokenizer.decode(greedy_by_hand(model, prompt, 10, stops))
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=10)
    assert reply(model, tokenizer, messages, sampling) == expected


def test_reply_drops_old_exchanges_to_leave_room(model, tokenizer):
    long_turns = []
    for k in range(12):
        long_turns += [Message(role="user", content=f"the cat sat on the mat {k}"),
                       Message(role="assistant", content="the dog sat on the log")]
    messages = [*long_turns, Message(role="user", content="on the")]
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=40)
    context = model.config.max_seq_len
    room = context - 40
    kept = encode_chat(tokenizer, messages, max_len=room, add_generation_prompt=True).input_ids
    assert len(encode_chat(tokenizer, messages, add_generation_prompt=True).input_ids) > room
    stops = {tokenizer.im_end_id, tokenizer.eos_id}
    expected = tokenizer.decode(greedy_by_hand(model, kept, 40, stops))
    assert reply(model, tokenizer, messages, sampling) == expected


def test_conversation_html_escapes_and_orders_messages():
    page = conversation_html(
        "be <brief>", [Message(role="user", content="x < y?"),
                       Message(role="assistant", content="yes")]
    )
    assert "be &lt;brief&gt;" in page and "x &lt; y?" in page
    assert page.index("x &lt; y?") < page.index("yes")


# ---------------------------------------------------------------------- widgets


def test_playground_chart_follows_the_sliders(model, tokenizer):
    playground = SamplingPlayground(model, tokenizer, prompt=PROMPT)
    assert playground.chart.value.count("<tr>") == 11  # header + the top 10
    before = playground.chart.value
    playground.temperature.value = 1.9
    assert playground.chart.value != before
    playground.top_p.value = 1.0
    playground.top_k.value = 1
    assert playground.chart.value.count("background:#4c72b0") == 1  # one bar kept
    playground.top_k.value = 4
    assert playground.chart.value.count("background:#4c72b0") == 4
    playground.prompt.value = "cat " * 200
    assert "context length" in playground.chart.value


def test_playground_generate_button_fills_the_output(model, tokenizer):
    playground = SamplingPlayground(model, tokenizer, prompt=PROMPT)
    assert playground.output.value == ""
    playground.temperature.value = 0.0
    playground.max_new_tokens.value = 8
    playground.generate_button.click()
    expected = generate_text(model, tokenizer, PROMPT, playground.sampling())
    assert playground.sampling() == SamplingConfig(
        temperature=0.0, top_k=50, top_p=0.95, max_new_tokens=8, seed=0
    )
    assert f"<b>{html.escape(expected)}</b>" in playground.output.value
    assert "&lt;|im_start|&gt;user" in playground.output.value


def test_chat_widget_send_and_reset(model, tokenizer):
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=6)
    chat = ChatWidget(model, tokenizer, system="Be brief.", sampling=sampling)
    assert "system: Be brief." in chat.conversation.value
    chat.message.value = "the cat"
    chat.send_button.click()
    expected = reply(
        model, tokenizer,
        [Message(role="system", content="Be brief."), Message(role="user", content="the cat")],
        sampling,
    )
    assert chat.messages == [Message(role="user", content="the cat"),
                             Message(role="assistant", content=expected)]
    assert chat.message.value == ""
    assert chat.conversation.value.count("<b>user:</b>") == 1
    chat.send_message("on the")
    assert [m["role"] for m in chat.messages] == ["user", "assistant"] * 2
    chat.system.value = "Be kind."
    assert "system: Be kind." in chat.conversation.value
    chat.reset_button.click()
    assert chat.messages == [] and "<b>user:</b>" not in chat.conversation.value


def test_chat_widget_reports_a_conversation_that_cannot_fit(model, tokenizer):
    chat = ChatWidget(model, tokenizer, system="cat " * 300)
    chat.send_message("hello")
    assert chat.messages == []
    assert "max_len" in chat.conversation.value
