"""ChatML: how a conversation becomes one token sequence, and which of its tokens are trained.

A chat model reads a whole conversation as one stream of tokens. ChatML frames every
message with two special tokens and puts the speaker's role on the first line::

    <|im_start|>system
    You are a helpful assistant.<|im_end|>
    <|im_start|>user
    What is 2 + 2?<|im_end|>
    <|im_start|>assistant
    4<|im_end|>

At inference the prompt ends with ``<|im_start|>assistant\\n`` (the *generation prompt*); the
model writes the reply and then ``<|im_end|>``, where the sampler stops.

Instruction tuning trains only on what the assistant says. Every other position gets the
label ``-100``, the ``ignore_index`` of PyTorch's cross-entropy, so the model is not taught
to predict the user's words. Each reply's closing ``<|im_end|>`` *is* labelled: that is how
the model learns to stop. The ``"\\n"`` after it is not: generation has already stopped at
``<|im_end|>``, so that newline is only glue between messages.

A tokenizer read from another tool brings its own chat template (Jinja), which
``Tokenizer.apply_chat_template`` renders. SmolLM2's is this same ChatML with another default
system message, so ``encode_chat`` asks the template which default it inserts
(``default_system``) and checks that the template renders exactly the text its pieces spell.

The special tokens never come from text. ``encode_chat`` inserts their ids itself and
encodes roles and contents as plain text, so a user who types ``<|im_end|>`` gets ordinary
byte tokens and cannot end their own message early.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, TypedDict

from .model import IGNORE_INDEX
from .tokenizer import IM_END, IM_START, Tokenizer

ROLES = ("system", "user", "assistant")
DEFAULT_SYSTEM = "You are a helpful assistant."
# format_chatml as a Jinja chat template, for the tokenizer_config.json that Tokenizer.save_hf
# writes: transformers' apply_chat_template then renders the same text.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\\n" + DEFAULT_SYSTEM + "<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class Message(TypedDict):
    role: Literal["system", "user", "assistant"]
    content: str


class ConversationTooLongError(ValueError):
    """Even the system message and the last exchange alone do not fit in ``max_len`` tokens."""


@dataclass
class EncodedChat:
    """Token ids of a rendered conversation and their training labels.

    ``labels`` has the same length as ``input_ids`` and is *not* shifted: ``labels[i]`` is
    ``input_ids[i]`` where that token is a training target and ``-100`` elsewhere. The loss
    does the shift (logits at position ``i`` predict the label at ``i + 1``), as in
    Hugging Face's causal-LM convention.
    """

    input_ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


def check_messages(messages: Sequence[Message]) -> None:
    """Raise ``ValueError`` naming the first message that is not a valid chat message.

    A message is a dict with a known ``role`` and a string ``content``; a system message
    may only come first, because the system prompt frames everything after it.
    """
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ValueError(
                f"message {i}: expected a dict with 'role' and 'content', "
                f"got {type(message).__name__}"
            )
        for field in ("role", "content"):
            if field not in message:
                raise ValueError(f"message {i}: missing field {field!r}")
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise ValueError(f"message {i}: unknown role {role!r} (expected one of {ROLES})")
        if not isinstance(content, str):
            raise ValueError(
                f"message {i}: content must be a string, got {type(content).__name__}"
            )
        if role == "system" and i != 0:
            raise ValueError(f"message {i}: a system message may only come first")


def with_default_system(
    messages: Sequence[Message], default: str = DEFAULT_SYSTEM
) -> list[Message]:
    """The checked messages, starting with ``default`` unless they bring their own system one."""
    check_messages(messages)
    if messages and messages[0]["role"] == "system":
        return list(messages)
    return [Message(role="system", content=default), *messages]


def format_chatml(
    messages: Sequence[Message],
    add_generation_prompt: bool = False,
    default_system: str = DEFAULT_SYSTEM,
) -> str:
    """The ChatML text of a conversation, for reading; models get ``encode_chat``'s ids."""
    text = "".join(
        f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n"
        for m in with_default_system(messages, default_system)
    )
    if add_generation_prompt:
        text += f"{IM_START}assistant\n"
    return text


def split_turns(
    messages: Sequence[Message],
    add_generation_prompt: bool = False,
    default_system: str = DEFAULT_SYSTEM,
) -> tuple[Message, list[list[Message]]]:
    """The system message and the exchanges that follow it.

    An exchange is a user message and the assistant's reply. User and assistant must
    alternate, starting with the user. A training conversation ends with a reply; a
    prompt for generation ends with a user message, whose exchange is just ``[user]``.
    """
    system, *rest = with_default_system(messages, default_system)
    first_index = len(messages) - len(rest)  # index of rest[0] in the caller's list
    for i, message in enumerate(rest):
        expected = "user" if i % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise ValueError(
                f"message {first_index + i}: expected role {expected!r}, got "
                f"{message['role']!r} (after the system message, user and assistant "
                f"alternate, starting with user)"
            )
    last_role = rest[-1]["role"] if rest else "system"
    wanted = "user" if add_generation_prompt else "assistant"
    if last_role != wanted:
        purpose = "a generation prompt" if add_generation_prompt else "training"
        raise ValueError(
            f"the conversation ends with role {last_role!r}, but {purpose} needs it "
            f"to end with role {wanted!r}"
        )
    return system, [rest[i : i + 2] for i in range(0, len(rest), 2)]


def default_system(tokenizer: Tokenizer) -> str:
    """The system message ``tokenizer``'s chat template puts first when a conversation has none.

    Ours is ``DEFAULT_SYSTEM``. A template is asked by rendering a one-message conversation
    and reading the system message off the front; a template that adds none, or renders
    something other than ChatML, is refused.
    """
    if tokenizer.chat_template is None:
        return DEFAULT_SYSTEM
    text = tokenizer.apply_chat_template([Message(role="user", content="")])
    head, tail = f"{IM_START}system\n", f"{IM_END}\n{IM_START}user\n{IM_END}\n"
    if not (text.startswith(head) and text.endswith(tail)):
        raise ValueError(
            "encode_chat needs a ChatML chat template that puts a default system message "
            f"first; this tokenizer's renders a lone user message as {text!r}"
        )
    return text[len(head) : -len(tail)]


def _join(parts: Sequence[EncodedChat]) -> EncodedChat:
    return EncodedChat(
        input_ids=[t for part in parts for t in part.input_ids],
        labels=[t for part in parts for t in part.labels],
    )


def _encode_header(tokenizer: Tokenizer, role: str) -> list[int]:
    """``<|im_start|>{role}\\n``: the special id, then the role line as plain text."""
    return [tokenizer.im_start_id, *tokenizer.encode(f"{role}\n")]


def _encode_message(tokenizer: Tokenizer, message: Message) -> EncodedChat:
    """One message; an assistant message labels its content and its ``<|im_end|>``.

    The content is encoded on its own, apart from the role line, so the reply's first
    token is the same in training as when the model writes it after the generation prompt.
    """
    header = _encode_header(tokenizer, message["role"])
    reply = [*tokenizer.encode(message["content"]), tokenizer.im_end_id]
    newline = tokenizer.encode("\n")
    if message["role"] == "assistant":
        labels = [IGNORE_INDEX] * len(header) + reply + [IGNORE_INDEX] * len(newline)
    else:
        labels = [IGNORE_INDEX] * (len(header) + len(reply) + len(newline))
    return EncodedChat(input_ids=header + reply + newline, labels=labels)


def encode_chat(
    tokenizer: Tokenizer,
    messages: Sequence[Message],
    max_len: int | None = None,
    add_generation_prompt: bool = False,
) -> EncodedChat:
    """Token ids and assistant-only labels of a conversation rendered in ChatML.

    The ids equal ``tokenizer.encode(tokenizer.apply_chat_template(...),
    allowed_special="all")`` (and Hugging Face's ids of that text) whenever the
    pre-tokeniser cuts the text after the newline that ends a role line. Ours and GPT-2's
    do unless a content starts with whitespace before more whitespace or a word (ours:
    two whitespace characters, or only whitespace): then the newline and that whitespace
    form one chunk, which here is split in two. A tokenizer with a chat template supplies
    the default system message (``default_system``), and its template must render the very
    text these ids spell, or this raises ``ValueError``.

    With ``max_len``, the oldest exchanges are dropped (the system message is kept) until
    the conversation fits, so the result still ends with a whole reply, or with the
    generation prompt when ``add_generation_prompt`` is set (then every label is -100).
    If the system message and the last exchange alone are too long, this raises
    ``ConversationTooLongError``.
    """
    default = default_system(tokenizer)
    system, exchanges = split_turns(messages, add_generation_prompt, default)
    if tokenizer.chat_template is not None:
        rendered = tokenizer.apply_chat_template(messages, add_generation_prompt)
        if rendered != format_chatml(messages, add_generation_prompt, default):
            raise ValueError(
                "the tokenizer's chat template does not render this conversation as ChatML "
                f"(it gives {rendered!r}), so encode_chat cannot label it"
            )
    head = _encode_message(tokenizer, system)
    turns = [_join([_encode_message(tokenizer, m) for m in exchange]) for exchange in exchanges]
    if add_generation_prompt:
        prompt = _encode_header(tokenizer, "assistant")
        turns[-1] = _join([turns[-1], EncodedChat(prompt, [IGNORE_INDEX] * len(prompt))])
    if max_len is not None:
        while len(turns) > 1 and len(head) + sum(map(len, turns)) > max_len:
            turns.pop(0)
        needed = len(head) + len(turns[-1])
        if needed > max_len:
            raise ConversationTooLongError(
                f"the system message and the last exchange alone take {needed} tokens, "
                f"more than max_len={max_len}"
            )
    return _join([head, *turns])
