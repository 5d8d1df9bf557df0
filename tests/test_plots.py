"""The book's figures draw Chinese text: no glyph may fall back to an empty box."""

import warnings

import matplotlib

matplotlib.use("Agg")

from tinyllm_lib import plots  # noqa: E402  (the backend must be chosen first)


def test_figures_draw_chinese_and_latin_without_missing_glyphs():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns "Glyph ... missing from font(s)"
        fig = plots.next_token_bars(["红色", "blue", "▁年龄", "\\xe4"], [0.4, 0.3, 0.2, 0.1],
                                    [True, True, False, False], "下一个 token")
        fig.canvas.draw()
    matplotlib.pyplot.close(fig)
