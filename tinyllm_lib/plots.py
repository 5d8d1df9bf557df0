"""The matplotlib figures the book shows.

Each function draws one figure from data the caller computed with the library and
returns the ``matplotlib.figure.Figure``, so a notebook cell stays one line and the
plotting code does not hide the lesson. Sections follow the chapters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib.resources import files

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import font_manager
from matplotlib.figure import Figure


def use_cjk_font() -> None:
    """Let every figure draw Chinese as well as Latin text.

    matplotlib's default font (DejaVu Sans) has no Chinese glyphs, and this book's world is
    bilingual. The ``mplfonts`` package ships Noto Sans CJK SC as a file; registering it
    and listing it after DejaVu Sans in ``font.family`` makes matplotlib fall back glyph by
    glyph: Latin letters keep DejaVu Sans, Chinese characters come from Noto. Called once
    when this module is imported.
    """
    noto = str(files("mplfonts") / "fonts" / "NotoSansCJKsc-Regular.otf")
    font_manager.fontManager.addfont(noto)
    cjk_name = font_manager.FontProperties(fname=noto).get_name()
    plt.rcParams["font.family"] = ["DejaVu Sans", cjk_name]


use_cjk_font()
# Figures are drawn for the book's content column, about 7.5 inches wide, and at 150 dpi,
# so that the browser shrinks a figure to the column rather than blowing it up: tick labels
# stay sharp and readable.
plt.rcParams["figure.dpi"] = 150


def grouped_bar_positions(groups: int, series: int) -> tuple[list[np.ndarray], float]:
    """The x positions of each series' bars in a grouped bar chart, and the bar width.

    Groups sit at 0, 1, 2, ...; the ``series`` bars of a group share 80% of the space
    between group centres, side by side.
    """
    width = 0.8 / series
    return [np.arange(groups) + (k - (series - 1) / 2) * width for k in range(series)], width


# --- Chapters 3 and 6: ChatML and sampling ---


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
    ax.set_xticks(range(len(tokens)), tokens, rotation=60)
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
    positions, width = grouped_bar_positions(len(tokens), len(series))
    for x, (name, values) in zip(positions, series.items(), strict=True):
        ax.bar(x, values, width=width, label=name)
    ax.set_xticks(range(len(tokens)), tokens, rotation=60)
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


# --- Chapter 1: the TinyLLM architecture ---


def matrix_heatmap(
    matrix: np.ndarray,
    title: str,
    xlabel: str,
    ylabel: str,
    ticklabels: Sequence[str] | None = None,
    cmap: str = "viridis",
) -> Figure:
    """A matrix as a colour image (masks, RoPE tables, score matrices), row 0 at the top."""
    values = np.asarray(matrix, dtype=float)
    fig, ax = plt.subplots(figsize=(5, 4))
    image = ax.imshow(values, cmap=cmap, aspect="auto", interpolation="nearest")
    fig.colorbar(image, ax=ax)
    if ticklabels is not None:
        ax.set_xticks(range(len(ticklabels)), ticklabels, rotation=90)
        ax.set_yticks(range(len(ticklabels)), ticklabels)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    fig.tight_layout()
    return fig


def attention_heads(models: Mapping[str, np.ndarray], tokens: Sequence[str],
                    layer: int = 0) -> Figure:
    """One layer's attention weights ``[heads, seq, seq]`` for each model, a row of panels
    (one per head) each, sized for the book's column."""
    heads = next(iter(models.values())).shape[0]
    fig, axes = plt.subplots(len(models), heads, figsize=(7.5, 2.3 * len(models) + 0.6),
                             squeeze=False)
    for row, (name, weights) in zip(axes, models.items(), strict=True):
        for head, ax in enumerate(row):
            ax.imshow(weights[head], cmap="Blues", vmin=0, vmax=1)
            ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=8)
            ax.set_yticks(range(len(tokens)), tokens if head == 0 else [], fontsize=8)
            ax.set_title(f"{name}, head {head}", fontsize=9)
        row[0].set_ylabel(f"layer {layer} query")
    fig.supxlabel("key (attended to)", fontsize=9)
    fig.tight_layout()
    return fig


def swiglu_gate(
    x: np.ndarray,
    activations: Mapping[str, np.ndarray],
    gate_values: np.ndarray,
    up_values: np.ndarray,
    unit: np.ndarray,
) -> Figure:
    """Activation functions over ``x``, and the SwiGLU unit ``unit[i, j] = silu(g_i) * u_j``."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    styles = ("--", "-", ":", "-.")
    for k, (label, values) in enumerate(activations.items()):
        left.plot(x, values, label=label, linestyle=styles[k % len(styles)])
    left.axhline(0, color="grey", linewidth=0.5)
    left.set(xlabel="x", ylabel="activation", title="SiLU: a smooth, slightly negative ReLU")
    left.legend(fontsize=8)
    limit = float(np.abs(unit).max())
    extent = (up_values.min(), up_values.max(), gate_values.min(), gate_values.max())
    image = right.imshow(unit, origin="lower", extent=extent, cmap="RdBu_r", aspect="auto",
                         vmin=-limit, vmax=limit)
    fig.colorbar(image, ax=right)
    right.set(xlabel="up value u", ylabel="gate value g", title="SwiGLU unit: silu(g) · u")
    fig.tight_layout()
    return fig


def parameter_bars(counts: Mapping[str, Mapping[str, int]]) -> Figure:
    """Parameters per component, one panel per model (millions, with percentages)."""
    fig, axes = plt.subplots(1, len(counts), figsize=(4.5 * len(counts), 3.6), squeeze=False)
    for ax, (model_name, parts) in zip(axes[0], counts.items(), strict=True):
        total = sum(parts.values())
        bars = ax.bar(list(parts), [n / 1e6 for n in parts.values()])
        for bar, n in zip(bars, parts.values(), strict=True):
            ax.annotate(f"{100 * n / total:.1f}%", (bar.get_x() + bar.get_width() / 2,
                        bar.get_height()), ha="center", va="bottom", fontsize=8)
        ax.set(title=f"{model_name}: {total / 1e6:.2f} M parameters", ylabel="millions")
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    return fig


# --- Chapter 2: LoRA math ---


def lora_share_curves(
    ranks: Sequence[int], widths: Sequence[int], share: Mapping[tuple[int, int], float]
) -> Figure:
    """LoRA's trainable share of a square matrix, against rank and against width."""
    fig, (by_rank, by_width) = plt.subplots(1, 2, figsize=(9, 3.6))
    for width in widths:
        by_rank.plot(ranks, [100 * share[width, r] for r in ranks], marker="o", label=f"d={width}")
    by_rank.set(xscale="log", yscale="log", xlabel="rank r", ylabel="trainable share (%)",
                title="share = 2r/d grows with the rank")
    by_rank.set_xticks(ranks, [str(r) for r in ranks])
    by_rank.minorticks_off()
    by_rank.legend(fontsize=8)
    for rank in ranks[::2]:
        by_width.plot(widths, [100 * share[w, rank] for w in widths], marker="o",
                      label=f"r={rank}")
    by_width.set(xscale="log", yscale="log", xlabel="width d", ylabel="trainable share (%)",
                 title="and shrinks with the width")
    by_width.set_xticks(widths, [str(w) for w in widths])
    by_width.minorticks_off()
    by_width.legend(fontsize=8)
    fig.tight_layout()
    return fig


def update_norm_vs_rank(ranks: Sequence[int], norms: Mapping[str, Sequence[float]]) -> Figure:
    """Size of the learned LoRA update against the rank, one line per scaling rule."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for label, values in norms.items():
        ax.plot(ranks, values, marker="o", label=label)
    ax.set(xscale="log", yscale="log", xlabel="rank r",
           ylabel="‖ΔW‖ / ‖W‖ (mean over layers)", title="Update size after a few Adam steps")
    ax.set_xticks(ranks, [str(r) for r in ranks])
    ax.minorticks_off()
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def singular_value_spectra(spectra: Mapping[str, np.ndarray]) -> Figure:
    """Singular values (normalised by the largest) and cumulative energy, per matrix."""
    fig, (values, energy) = plt.subplots(1, 2, figsize=(9, 3.6))
    for label, sigma in spectra.items():
        sigma = np.asarray(sigma, dtype=float)
        index = np.arange(1, len(sigma) + 1)
        values.plot(index, sigma / sigma[0], label=label)
        cumulative = np.cumsum(sigma**2) / np.sum(sigma**2)
        energy.plot(index, 100 * cumulative, label=label)
    values.set(xscale="log", xlabel="index k", ylabel="σ_k / σ_1", title="Singular values")
    energy.axhline(90, color="grey", linestyle=":", linewidth=1)
    energy.set(xscale="log", xlabel="top k singular values", ylabel="energy held (%)",
               title="Cumulative energy Σσ² (dotted: 90%)")
    values.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return fig


# --- Chapters 4 and 5: the training loop and evaluation ---


def lr_schedule(lrs: Sequence[float], warmup_steps: int) -> Figure:
    """Learning rate per optimizer step: linear warmup, then a cosine down to the floor."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(np.arange(1, len(lrs) + 1), lrs)
    ax.axvspan(0.5, warmup_steps + 0.5, color="tab:orange", alpha=0.15, label="warmup")
    ax.axhline(min(lrs[warmup_steps:]), color="grey", linestyle=":", label="floor")
    ax.set(xlabel="optimizer step", ylabel="learning rate", title="Warmup + cosine schedule")
    ax.set_ylim(bottom=0)
    ax.legend()
    fig.tight_layout()
    return fig


def loss_curves(
    steps: Sequence[int],
    train_loss: Sequence[float],
    val_steps: Sequence[int],
    val_loss: Sequence[float],
    title: str,
    best_step: int | None = None,
    stop_step: int | None = None,
) -> Figure:
    """Train loss per step, validation loss per evaluation; optional best/stop markers."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(steps, train_loss, color="tab:blue", alpha=0.35, label="train loss (per step)")
    window = min(10, len(train_loss))
    smooth = np.convolve(train_loss, np.ones(window) / window, mode="valid")
    ax.plot(steps[window - 1:], smooth, color="tab:blue", label=f"train loss ({window}-step mean)")
    ax.plot(val_steps, val_loss, "o-", color="tab:red", label="validation loss")
    if best_step is not None:
        ax.axvline(best_step, color="tab:green", linestyle="--", label=f"best (step {best_step})")
    if stop_step is not None:
        ax.axvline(stop_step, color="black", linestyle=":", label=f"stopped (step {stop_step})")
    ax.set(xlabel="optimizer step", ylabel="loss (NLL per label token)", title=title)
    ax.legend()
    fig.tight_layout()
    return fig


def method_comparison(metrics: Mapping[str, Mapping[str, float]]) -> Figure:
    """One small bar chart per metric, one bar per method (``metrics[metric][method]``)."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(2.2 * len(metrics), 3.2))
    for ax, (metric, values) in zip(np.atleast_1d(axes), metrics.items(), strict=True):
        bars = ax.bar(list(values), list(values.values()),
                      color=[f"C{i}" for i in range(len(values))])
        labels = [f"{v:,.0f}" if v >= 1000 else f"{v:.3g}" for v in values.values()]
        ax.bar_label(bars, labels=labels, fontsize=8)
        ax.set_yticks([])  # the bars carry their values
        ax.margins(y=0.15)
        ax.set_title(metric, fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    return fig


def accuracy_bars(series: Mapping[str, Mapping[str, float]], title: str) -> Figure:
    """Exact-match accuracy per task, one bar colour per model (``series[model][task]``)."""
    tasks = list(dict.fromkeys(task for accuracy in series.values() for task in accuracy))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    positions, width = grouped_bar_positions(len(tasks), len(series))
    for x, (name, accuracy) in zip(positions, series.items(), strict=True):
        bars = ax.bar(x, [accuracy.get(task, 0.0) for task in tasks], width=width, label=name)
        if len(series) <= 2:  # more labels than two a group run into each other
            ax.bar_label(bars, fmt="{:.0%}", fontsize=7)
    ax.set_xticks(range(len(tasks)), tasks, rotation=30, ha="right")
    ax.set(ylabel="exact match", title=title, ylim=(0, 1.3))  # headroom for the legend
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.legend(loc="upper center", ncols=len(series), fontsize=8)
    fig.tight_layout()
    return fig


# --- Chapter 8: QLoRA ---


def quantization_levels(scaled: np.ndarray, levels: Mapping[str, np.ndarray],
                        title: str) -> Figure:
    """A histogram of block-scaled weights (in [-1, 1]) with each 4-bit type's levels
    drawn as a row of ticks beneath it, so one sees where each type spends its 16 values."""
    fig, (hist, rows) = plt.subplots(2, 1, figsize=(8, 4.2), sharex=True,
                                     gridspec_kw={"height_ratios": [3, 1.2]})
    hist.hist(scaled, bins=200, color="0.6")
    hist.set(ylabel="weights", title=title)
    for row, values in enumerate(levels.values()):
        rows.vlines(values, row - 0.35, row + 0.35, color=f"C{row}", linewidth=2)
    rows.set_yticks(range(len(levels)), list(levels))
    rows.set_ylim(len(levels) - 0.5, -0.5)
    rows.set(xlabel="weight / absmax of its block")
    fig.tight_layout()
    return fig


def memory_stack(labels: Sequence[str], parts: Mapping[str, Sequence[float]], title: str,
                 unit: str = "MiB") -> Figure:
    """Memory per run as horizontal bars stacked by what holds it (``parts[name]``: one
    value per label), the total at the end of each bar; the first label is on top."""
    fig, ax = plt.subplots(figsize=(7.5, 0.55 * len(labels) + 1.8))
    y = np.arange(len(labels))[::-1]
    left = np.zeros(len(labels))
    for k, (name, values) in enumerate(parts.items()):
        values = np.asarray(values, dtype=float)
        ax.barh(y, values, left=left, color=f"C{k}", label=name)
        left += values
    for position, total in zip(y, left, strict=True):
        ax.annotate(f"{total:,.1f} {unit}" if total < 100 else f"{total:,.0f} {unit}",
                    (total, position), xytext=(3, 0), textcoords="offset points",
                    va="center", fontsize=9)
    ax.set_yticks(y, labels, fontsize=9)
    ax.set_xlim(0, left.max() * 1.2)
    ax.set(xlabel=unit, title=title)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


# --- Chapter 9: preference tuning (DPO) ---


def policy_densities(y: np.ndarray, densities: Mapping[str, np.ndarray], title: str) -> Figure:
    """Probability densities over a one-dimensional reply ``y``, one line each."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for i, (name, density) in enumerate(densities.items()):
        ax.plot(y, density, label=name, linestyle="--" if i == len(densities) - 1 else "-")
    ax.set(xlabel="reply y", ylabel="density", title=title)
    ax.legend()
    fig.tight_layout()
    return fig


def reward_curves(runs: Mapping[str, Sequence[Mapping]], window: int = 10) -> Figure:
    """DPO's logged rewards per step (``StepRecord`` dicts), one panel per run: the chosen
    and rejected rewards and their margin, each a ``window``-step mean, and the accuracy."""
    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 3.6), squeeze=False)
    for ax, (name, history) in zip(axes[0], runs.items(), strict=True):
        steps = [record["step"] for record in history]
        for metric, color in (("rewards/chosen", "tab:green"), ("rewards/rejected", "tab:red"),
                              ("rewards/margins", "tab:blue")):
            values = [record["metrics"][metric] for record in history]
            width = min(window, len(values))
            smooth = np.convolve(values, np.ones(width) / width, mode="valid")
            ax.plot(steps[width - 1:], smooth, color=color, label=metric)
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set(xlabel="optimizer step", ylabel="reward (beta x log-ratio)", title=name)
        accuracy = ax.twinx()
        values = [record["metrics"]["rewards/accuracies"] for record in history]
        width = min(window, len(values))
        accuracy.plot(steps[width - 1:], np.convolve(values, np.ones(width) / width, "valid"),
                      color="black", alpha=0.3, label="rewards/accuracies")
        accuracy.set(ylim=(0, 1.05), ylabel="accuracy")
        lines = ax.get_legend_handles_labels()
        more = accuracy.get_legend_handles_labels()
        ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig


# --- Chapter 10: serving ---


def serving_load(clients: Sequence[int], tokens_per_s: Sequence[float],
                 first_token_ms: Mapping[str, Sequence[float]], title: str) -> Figure:
    """A server under load: aggregate tokens/s (left) and time to first token (right, one
    line per statistic, e.g. median and p95) against the number of concurrent clients."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(7.5, 3.2))
    left.plot(clients, tokens_per_s, marker="o", label="measured")
    left.plot(clients, [tokens_per_s[0] * c for c in clients], linestyle=":", color="0.5",
              label="one client's rate x clients")
    left.set(xscale="log", xlabel="concurrent clients", ylabel="tokens / s (all clients)")
    left.set_ylim(0, max(tokens_per_s) * 1.3)
    left.legend(fontsize=8)
    for name, values in first_token_ms.items():
        right.plot(clients, values, marker="o", label=name)
    right.set(xscale="log", xlabel="concurrent clients", ylabel="time to first token (ms)")
    right.set_ylim(bottom=0)
    right.legend(fontsize=8)
    for ax in (left, right):
        ax.minorticks_off()
        ax.set_xticks(clients, [str(c) for c in clients])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# --- Appendix: benchmarks ---


def grouped_bars(
    groups: Sequence[str],
    series: Mapping[str, Sequence[float]],
    notes: Sequence[str],
    title: str,
    marks: Sequence[float] | None = None,
    mark_label: str = "target",
    ylabel: str = "tokens / s",
) -> Figure:
    """One value per group and series (e.g. tokens/s per implementation), a note above
    each group.

    ``marks`` (optional, one per group) draws a black dash over the first series' bar: the
    value that series would need, e.g. to reach a speedup target.
    """
    fig, ax = plt.subplots(figsize=(8, 4))
    positions, width = grouped_bar_positions(len(groups), len(series))
    x = np.arange(len(groups))
    tops = np.zeros(len(groups))
    for bar_x, (name, values) in zip(positions, series.items(), strict=True):
        ax.bar(bar_x, values, width=width, label=name)
        tops = np.maximum(tops, values)
    if marks is not None:
        first = positions[0]
        ax.hlines(marks, first - width / 2, first + width / 2, color="black", linewidth=2,
                  label=mark_label)
        tops = np.maximum(tops, marks)
    ax.set_ylim(0, tops.max() * 1.3)
    for bar_x, values in zip(positions, series.values(), strict=True):
        for position, value in zip(bar_x, values, strict=True):  # in a tall bar, above a short
            inside = value > 0.1 * tops.max() * 1.3
            ax.annotate(f"{value:,.0f}", (position, value), xytext=(0, -3 if inside else 2),
                        textcoords="offset points", ha="center", va="top" if inside else "bottom",
                        fontsize=7, color="white" if inside else "black")
    for position, top, note in zip(x, tops, notes, strict=True):
        ax.annotate(note, (position, top), xytext=(0, 14), textcoords="offset points",
                    ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, groups)
    ax.set(ylabel=ylabel, title=title)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def peak_fraction_bars(
    groups: Sequence[str],
    series: Mapping[str, Sequence[float]],
    targets: Sequence[float | None],
    title: str,
) -> Figure:
    """Achieved share of the measured matmul peak per group and implementation.

    A dashed red line over a group marks its target share, where ``targets`` has one.
    """
    from matplotlib.ticker import PercentFormatter

    fig, ax = plt.subplots(figsize=(8, 3.8))
    positions, width = grouped_bar_positions(len(groups), len(series))
    x = np.arange(len(groups))
    for bar_x, (name, values) in zip(positions, series.items(), strict=True):
        bars = ax.bar(bar_x, values, width=width, label=name)
        ax.bar_label(bars, fmt="{:.0%}", fontsize=7)
    labelled = False
    for position, target in zip(x, targets, strict=True):
        if target is not None:
            ax.hlines(target, position - 0.45, position + 0.45, color="tab:red",
                      linestyle="--", label=None if labelled else f"target {target:.0%}")
            labelled = True
    ax.set_xticks(x, groups)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set(ylabel="share of matmul peak", title=title, ylim=(0, 1))
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return fig


def time_breakdown(
    labels: Sequence[str], ms: Mapping[str, Sequence[float]],
    unit: str = "milliseconds per training step",
) -> Figure:
    """Milliseconds per category of a step as stacked horizontal bars, and as shares.

    ``ms[category]`` holds one value per label; the first label is drawn at the top.
    ``unit`` names what one bar measures.
    """
    from matplotlib.ticker import PercentFormatter

    fig, (absolute, share) = plt.subplots(1, 2, figsize=(11, 0.45 * len(labels) + 1.8),
                                          sharey=True)
    y = np.arange(len(labels))[::-1]
    totals = np.sum([np.asarray(v, dtype=float) for v in ms.values()], axis=0)
    left_ms, left_share = np.zeros(len(labels)), np.zeros(len(labels))
    for k, (category, values) in enumerate(ms.items()):
        values = np.asarray(values, dtype=float)
        absolute.barh(y, values, left=left_ms, color=f"C{k}", label=category)
        share.barh(y, values / totals, left=left_share, color=f"C{k}")
        left_ms += values
        left_share += values / totals
    for position, total in zip(y, totals, strict=True):
        text = f"{total:,.0f}" if total >= 10 else f"{total:.2f}"
        absolute.annotate(text, (total, position), xytext=(3, 0),
                          textcoords="offset points", va="center", fontsize=7)
    absolute.set_yticks(y, labels, fontsize=8)
    absolute.set(xlabel=unit, title="Time per step")
    absolute.set_xlim(0, totals.max() * 1.12)
    share.xaxis.set_major_formatter(PercentFormatter(1.0))
    share.set(xlabel="share of the step", title="Share of the step", xlim=(0, 1))
    fig.legend(*absolute.get_legend_handles_labels(), loc="lower center",
               ncol=len(ms), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def memory_bars(
    labels: Sequence[str], peak_mb: Sequence[float], limit_mb: float, limit_label: str
) -> Figure:
    """Peak resident memory per run, with a dashed line at a limit (e.g. a target)."""
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(labels) + 2), 3.6))
    bars = ax.bar(range(len(labels)), peak_mb, color=[f"C{i}" for i in range(len(labels))])
    ax.bar_label(bars, fmt="{:,.0f} MB", fontsize=8)
    ax.axhline(limit_mb, color="tab:red", linestyle="--", label=limit_label)
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set(ylabel="peak RSS (MB)", title="Peak memory of a fresh process")
    ax.set_ylim(0, max(max(peak_mb), limit_mb) * 1.15)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig
