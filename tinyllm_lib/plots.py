"""The matplotlib figures the book shows.

Each function draws one figure from data the caller computed with the library and
returns the ``matplotlib.figure.Figure``, so a notebook cell stays one line and the
plotting code does not hide the lesson. Sections follow the chapters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

# --- Chapters 3 and 6: ChatML and sampling ---


def _drawable(labels: Sequence[str]) -> list[str]:
    """``labels`` with characters the default font cannot draw (e.g. Chinese) as ``\\uXXXX``.

    Without a CJK font matplotlib draws empty boxes and warns; an escape is at least exact.
    """
    from matplotlib import font_manager, ft2font

    font = ft2font.FT2Font(font_manager.findfont(font_manager.FontProperties()))
    drawable = font.get_charmap()
    return ["".join(c if ord(c) in drawable else f"\\u{ord(c):04x}" for c in label)
            for label in labels]


def chat_length_histogram(
    total_tokens: Sequence[int], label_tokens: Sequence[int], context: int
) -> Figure:
    """Histogram of tokens per conversation, all tokens vs trained (label) tokens."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    bins = np.arange(0, max(total_tokens) + 4, 2)
    ax.hist(total_tokens, bins=bins, alpha=0.7, label="all tokens")
    ax.hist(label_tokens, bins=bins, alpha=0.7, label="label tokens (trained)")
    ax.axvline(context, color="black", linestyle="--", label=f"context length {context}")
    ax.set(xlabel="tokens per conversation", ylabel="conversations",
           title="Training conversations in ChatML")
    ax.legend()
    fig.tight_layout()
    return fig


def next_token_bars(
    tokens: Sequence[str], probabilities: Sequence[float], kept: Sequence[bool], title: str
) -> Figure:
    """Next-token probabilities as bars, blue where the sampler keeps the token, grey removed."""
    from matplotlib.patches import Patch

    fig, ax = plt.subplots(figsize=(7, 3.5))
    colours = ["tab:blue" if k else "lightgrey" for k in kept]
    ax.bar(range(len(tokens)), probabilities, color=colours)
    ax.set_xticks(range(len(tokens)), _drawable(tokens), rotation=60)
    ax.set(xlabel="candidate next token", ylabel="probability", title=title)
    ax.legend(handles=[Patch(color="tab:blue", label="kept"),
                       Patch(color="lightgrey", label="removed")])
    fig.tight_layout()
    return fig


def grouped_token_bars(
    tokens: Sequence[str], series: Mapping[str, Sequence[float]], title: str
) -> Figure:
    """Probabilities of the same tokens under several settings, one bar colour per setting."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / len(series)
    for k, (name, values) in enumerate(series.items()):
        ax.bar(np.arange(len(tokens)) + (k - (len(series) - 1) / 2) * width, values,
               width=width, label=name)
    ax.set_xticks(range(len(tokens)), _drawable(tokens), rotation=60)
    ax.set(xlabel="candidate next token", ylabel="probability", title=title)
    ax.legend()
    fig.tight_layout()
    return fig


def kv_cache_timing(
    new_tokens: Sequence[int], cached_seconds: Sequence[float], uncached_seconds: Sequence[float]
) -> Figure:
    """Generation time against the number of new tokens, with and without the KV cache."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(new_tokens, uncached_seconds, "o-", label="use_cache=False (full forward per token)")
    ax.plot(new_tokens, cached_seconds, "o-", label="use_cache=True (one token per step)")
    ax.set(xlabel="new tokens generated", ylabel="seconds", title="What the KV cache saves")
    ax.set_ylim(bottom=0)
    ax.legend()
    fig.tight_layout()
    return fig
