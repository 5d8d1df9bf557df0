"""Interactive widgets for the notebooks: a sampling playground and a chat box.

Reading about temperature or top-p is one thing; dragging a slider and watching the
next-token distribution change is another. This module has two ``ipywidgets`` tools:

- ``SamplingPlayground``: a prompt box, sliders for every setting of ``SamplingConfig``,
  a live bar chart of the next token's distribution (which tokens the processors keep,
  which they remove) and a Generate button;
- ``ChatWidget``: a conversation with a model in ChatML, with a system prompt box.

The computations live in plain functions (``next_token_table``, ``generate_text``, the
HTML renderings, and ``sampling.reply`` for the chat) that take and return ordinary
values, so they can be tested and reused without a browser; the widget classes only lay
out controls and connect them to those functions. Everything is drawn as HTML rather than
with matplotlib: HTML redraws fast, and the browser has fonts for Chinese where
matplotlib may not.

Widgets need a live kernel to react. In a static page (the built book) they show the
state they were saved in, so a notebook should also show a static figure of the same data.
"""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import ipywidgets as widgets
import torch
from torch import nn

from .chat import DEFAULT_SYSTEM, EncodedChat, Message, format_chatml
from .model import IGNORE_INDEX
from .sampling import SamplingConfig, generate, process_logits, reply
from .tokenizer import Tokenizer

DEFAULT_PROMPT = format_chatml(
    [Message(role="user", content="What is 12 + 7?")], add_generation_prompt=True
)
VISIBLE_WHITESPACE = str.maketrans({" ": "␣", "\n": "↵", "\t": "⇥"})

# ------------------------------------------------------------------ token display


def token_text(tokenizer: Tokenizer, token_id: int) -> str:
    """A token's text for display, with whitespace made visible.

    Bytes that are not a whole UTF-8 character (a piece of a Chinese character or an
    emoji) show as ``\\xNN``: a byte-level token need not be a character.
    """
    piece = tokenizer.id_to_token_bytes(token_id).decode("utf-8", errors="backslashreplace")
    return piece.translate(VISIBLE_WHITESPACE)


def tokens_html(tokenizer: Tokenizer, encoded: EncodedChat) -> str:
    """The tokens of ``encoded`` as coloured boxes: green where the token is a label.

    A green token is one the loss trains the model to predict; grey ones are context
    only. Special tokens are bold. A token ending in a newline ends the line, so the
    boxes keep the layout of the ChatML text. Hover a box to see the token id.
    """
    specials = set(tokenizer.special_tokens.values())
    boxes = []
    for token_id, label in zip(encoded.input_ids, encoded.labels, strict=True):
        colour = "#b7e4c7" if label != IGNORE_INDEX else "#e9ecef"
        weight = "bold" if token_id in specials else "normal"
        boxes.append(
            f'<span title="id {token_id}" style="background:{colour};font-weight:{weight};'
            f'border:1px solid #adb5bd;border-radius:3px;padding:0 2px;margin:1px;'
            f'display:inline-block;font-family:monospace">'
            f"{html.escape(token_text(tokenizer, token_id))}</span>"
        )
        if tokenizer.id_to_token_bytes(token_id).endswith(b"\n"):
            boxes.append("<br>")
    legend = (
        '<div style="margin-top:4px;font-size:90%">'
        '<span style="background:#b7e4c7;padding:0 4px">trained (label = token)</span> '
        '<span style="background:#e9ecef;padding:0 4px">context only (label = -100)</span>'
        "</div>"
    )
    return f'<div style="line-height:1.9">{"".join(boxes)}</div>{legend}'


# ------------------------------------------------------------- next-token table


@dataclass(frozen=True)
class NextToken:
    """One candidate for the next token, as the sampler sees it.

    ``probability`` is the distribution after the repetition penalty and the temperature,
    before top-k and top-p: the one the truncation filters look at. ``kept`` says
    whether the filters let the token through, and ``sample_probability`` is its chance
    of being drawn, renormalised over the kept tokens (0 when removed). In greedy mode
    (temperature 0) ``probability`` is the model's own distribution (after the penalty)
    and only the most likely token is kept.
    """

    token_id: int
    text: str
    probability: float
    kept: bool
    sample_probability: float


def encode_prompt(tokenizer: Tokenizer, text: str) -> list[int]:
    """Ids for a prompt typed in the playground, where special tokens are allowed.

    The playground shows the model's input as raw ChatML text, so ``<|im_start|>`` typed
    there must become the special token. Never do this with text from a user of a chat
    application: ``encode_chat`` is the safe way to build a chat prompt.
    """
    return tokenizer.encode(text, allowed_special="all")


def _check_fits(model: nn.Module, prompt_ids: Sequence[int]) -> None:
    if not prompt_ids:
        raise ValueError("the prompt is empty: the model needs at least one token")
    context = model.config.max_seq_len
    if len(prompt_ids) > context:
        raise ValueError(
            f"the prompt has {len(prompt_ids)} tokens, more than the model's context "
            f"length of {context}"
        )


def next_token_logits(model: nn.Module, prompt_ids: Sequence[int]) -> torch.Tensor:
    """The model's logits ``[vocab]`` (float32, on the CPU) for the token after the prompt."""
    _check_fits(model, prompt_ids)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            logits = model(torch.tensor([list(prompt_ids)], device=device))[0, -1]
    finally:
        model.train(was_training)
    return logits.float().cpu()


def next_token_table(
    model: nn.Module, tokenizer: Tokenizer, prompt: str, sampling: SamplingConfig, top: int = 10
) -> list[NextToken]:
    """The ``top`` most likely next tokens after ``prompt``, most likely first.

    The same processors as ``generate`` (``process_logits``) decide what is kept, so
    the table shows exactly what sampling the first new token would do.
    """
    if top < 1:
        raise ValueError(f"next_token_table: top must be >= 1, got {top}")
    prompt_ids = encode_prompt(tokenizer, prompt)
    logits = next_token_logits(model, prompt_ids)
    prev_ids = torch.tensor(prompt_ids)
    if sampling.greedy:
        shaped = process_logits(logits, prev_ids, sampling)  # the penalty only
        kept = torch.zeros_like(shaped, dtype=torch.bool)
        kept[shaped.argmax()] = True
        sample = kept.float()
    else:
        untruncated = dataclasses.replace(sampling, top_k=None, top_p=1.0)
        shaped = process_logits(logits, prev_ids, untruncated)
        final = process_logits(logits, prev_ids, sampling)
        kept = torch.isfinite(final)
        sample = final.softmax(dim=-1)
    probs = shaped.softmax(dim=-1)
    order = probs.argsort(descending=True)[: min(top, probs.numel())]
    return [
        NextToken(
            token_id=int(i),
            text=token_text(tokenizer, int(i)),
            probability=float(probs[i]),
            kept=bool(kept[i]),
            sample_probability=float(sample[i]),
        )
        for i in order
    ]


def next_token_html(rows: Sequence[NextToken]) -> str:
    """``rows`` as an HTML bar chart: blue bars are kept by top-k/top-p, grey removed.

    Bar lengths are relative to the most likely token, so an unsure model's small
    probabilities still show their shape; the exact numbers are printed beside them.
    """
    lines = []
    longest = max((row.probability for row in rows), default=1.0) or 1.0
    for row in rows:
        colour = "#4c72b0" if row.kept else "#c8c8c8"
        width = max(row.probability / longest * 100, 0.5)
        lines.append(
            "<tr>"
            f'<td style="font-family:monospace;text-align:right;padding-right:6px">'
            f"{html.escape(row.text)}</td>"
            f'<td style="width:220px"><div style="background:{colour};width:{width:.1f}%;'
            f'height:14px"></div></td>'
            f'<td style="text-align:right;padding-left:6px">{row.probability:6.1%}</td>'
            f'<td style="text-align:right;padding-left:6px;color:#555">'
            f"{row.sample_probability:6.1%}</td>"
            "</tr>"
        )
    caption = (
        '<caption style="caption-side:bottom;font-size:85%;color:#555">probability after '
        "the repetition penalty and temperature; grey: removed by top-k / top-p; "
        "last column: the chance of being drawn</caption>"
    )
    header = "<tr><th>token</th><th></th><th>probability</th><th>if drawn</th></tr>"
    return f'<table style="font-size:90%">{caption}{header}{"".join(lines)}</table>'


# ------------------------------------------------------------------ generation


def generate_text(
    model: nn.Module, tokenizer: Tokenizer, prompt: str, sampling: SamplingConfig
) -> str:
    """The text ``generate`` continues ``prompt`` with, stopping at the end of a turn or text."""
    prompt_ids = encode_prompt(tokenizer, prompt)
    _check_fits(model, prompt_ids)
    return tokenizer.decode(generate(model, prompt_ids, sampling, stop_ids=tokenizer.stop_ids))


def conversation_html(system: str, messages: Sequence[Message]) -> str:
    """A conversation as chat bubbles: the system prompt on top, the user's on the right."""
    styles = {
        "user": "margin-left:25%;background:#dbe9f6",
        "assistant": "margin-right:25%;background:#f1f3f5",
    }
    bubbles = [f'<div style="color:#666;font-size:90%">system: {html.escape(system)}</div>']
    for message in messages:
        bubbles.append(
            f'<div style="{styles[message["role"]]};border-radius:6px;padding:4px 8px;'
            f'margin:4px 0;white-space:pre-wrap"><b>{message["role"]}:</b> '
            f"{html.escape(message['content'])}</div>"
        )
    return "".join(bubbles)


# ---------------------------------------------------------------------- widgets


def _error_html(err: Exception) -> str:
    return f'<span style="color:#b00020">{html.escape(str(err))}</span>'


class SamplingPlayground(widgets.VBox):
    """Prompt, sampling sliders, a live next-token chart, and a Generate button.

    The controls are attributes, so code can drive the playground as a reader would:
    ``playground.temperature.value = 1.5`` redraws the chart and
    ``playground.generate_button.click()`` fills ``playground.output``.
    """

    def __init__(
        self, model: nn.Module, tokenizer: Tokenizer, prompt: str = DEFAULT_PROMPT,
        top: int = 10,
    ) -> None:
        self.model, self.tokenizer, self.top = model, tokenizer, top
        defaults = SamplingConfig()
        slider = {"continuous_update": False, "style": {"description_width": "130px"}}
        self.prompt = widgets.Textarea(
            value=prompt, description="Prompt", rows=6, continuous_update=False,
            layout=widgets.Layout(width="98%"),
        )
        self.temperature = widgets.FloatSlider(
            value=defaults.temperature, min=0.0, max=2.0, step=0.05,
            description="temperature", **slider,
        )
        self.top_k = widgets.IntSlider(
            value=defaults.top_k or 0, min=0, max=100, description="top-k (0 = off)", **slider,
        )
        self.top_p = widgets.FloatSlider(
            value=defaults.top_p, min=0.0, max=1.0, step=0.01, description="top-p", **slider,
        )
        self.repetition_penalty = widgets.FloatSlider(
            value=defaults.repetition_penalty, min=1.0, max=2.0, step=0.05,
            description="repetition penalty", **slider,
        )
        self.max_new_tokens = widgets.IntSlider(
            value=32, min=1, max=model.config.max_seq_len, description="max new tokens", **slider,
        )
        self.seed = widgets.IntSlider(value=0, min=0, max=99, description="seed", **slider)
        self.chart = widgets.HTML()
        self.generate_button = widgets.Button(description="Generate", button_style="primary")
        self.output = widgets.HTML()
        controls = [self.temperature, self.top_k, self.top_p, self.repetition_penalty,
                    self.max_new_tokens, self.seed]
        for control in [self.prompt, *controls]:
            control.observe(self.refresh_chart, names="value")
        self.generate_button.on_click(self.run_generation)
        super().__init__(
            [self.prompt, widgets.HBox([widgets.VBox(controls), self.chart]),
             self.generate_button, self.output]
        )
        self.refresh_chart()

    def sampling(self) -> SamplingConfig:
        """The ``SamplingConfig`` the sliders currently describe."""
        return SamplingConfig(
            temperature=self.temperature.value, top_k=self.top_k.value, top_p=self.top_p.value,
            repetition_penalty=self.repetition_penalty.value,
            max_new_tokens=self.max_new_tokens.value, seed=self.seed.value,
        )

    def refresh_chart(self, change: Any = None) -> None:
        """Redraw the next-token chart for the current prompt and sliders."""
        try:
            rows = next_token_table(
                self.model, self.tokenizer, self.prompt.value, self.sampling(), self.top
            )
            self.chart.value = next_token_html(rows)
        except ValueError as err:
            self.chart.value = _error_html(err)

    def run_generation(self, button: widgets.Button | None = None) -> None:
        """Generate from the prompt with the current settings and show the result."""
        try:
            text = generate_text(self.model, self.tokenizer, self.prompt.value, self.sampling())
        except ValueError as err:
            self.output.value = _error_html(err)
            return
        self.output.value = (
            f'<pre style="white-space:pre-wrap"><span style="color:#888">'
            f"{html.escape(self.prompt.value)}</span><b>{html.escape(text)}</b></pre>"
        )


class ChatWidget(widgets.VBox):
    """A chat with the model: a system prompt box, the conversation, Send and Reset.

    Each reply is ``sampling.reply`` on the whole conversation so far, so the model sees the
    history as ChatML, exactly as in training. ``send_message(text)`` does what typing
    ``text`` and pressing Send does (it is not called ``send`` because every widget already
    has a ``send`` method, which talks to the browser).
    """

    def __init__(
        self, model: nn.Module, tokenizer: Tokenizer, system: str = DEFAULT_SYSTEM,
        sampling: SamplingConfig | None = None,
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.chat_sampling = sampling or SamplingConfig(temperature=0.7, max_new_tokens=64, seed=0)
        self.messages: list[Message] = []
        wide = widgets.Layout(width="98%")
        self.system = widgets.Text(value=system, description="System", layout=wide)
        self.conversation = widgets.HTML()
        self.message = widgets.Text(placeholder="Type a message and press Send",
                                    layout=widgets.Layout(width="70%"))
        self.send_button = widgets.Button(description="Send", button_style="primary")
        self.reset_button = widgets.Button(description="Reset")
        self.send_button.on_click(lambda _: self.send_message(self.message.value))
        self.reset_button.on_click(self.reset)
        self.system.observe(self.redraw, names="value")
        super().__init__(
            [self.system, self.conversation,
             widgets.HBox([self.message, self.send_button, self.reset_button])]
        )
        self.redraw()

    def send_message(self, text: str) -> None:
        """Add ``text`` as the user's message and the model's reply to the conversation."""
        if not text.strip():
            return
        messages = [Message(role="system", content=self.system.value), *self.messages,
                    Message(role="user", content=text)]
        try:
            answer = reply(self.model, self.tokenizer, messages, self.chat_sampling)
        except ValueError as err:  # e.g. ConversationTooLongError
            self.conversation.value = conversation_html(self.system.value, self.messages) + (
                _error_html(err)
            )
            return
        self.messages += [messages[-1], Message(role="assistant", content=answer)]
        self.message.value = ""
        self.redraw()

    def reset(self, button: widgets.Button | None = None) -> None:
        """Forget the conversation (the system prompt stays)."""
        self.messages = []
        self.redraw()

    def redraw(self, change: Any = None) -> None:
        self.conversation.value = conversation_html(self.system.value, self.messages)
