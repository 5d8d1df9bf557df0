"""Mixed text for tokenizer comparisons: English, Chinese, code, digits, emoji, accents, and
runs of spaces and newlines between them (35k characters, the same every run)."""

import random

ENGLISH = [
    "The little robot walked to the market on Monday morning.",
    'She said: "don\'t go", but he\'d already left; they\'ll see.',
    "It's JOHN'S book, isn't it? We've WON'T.",
    "A quick brown fox jumps over the lazy dog",
    "Hello,world!How are you?",
]
CHINESE = [
    "小明住在北京，他喜欢读书。",
    "机器人在星期一早上走到了市场。",
    "问：十七加二十五等于多少？答：四十二。",
    "今天天气很好，我们去公园散步吧！",
    "日本語のテキストも少し。",
    "한국어 문장도 있습니다.",
]
CODE = [
    "def f(x):\n    return x ** 2  # square\n",
    "for (int i = 0; i < n; ++i) { a[i] += b[i]; }",
    "const x = {a: 1, 'b': [2, 3]};",
    'if __name__ == "__main__":\n\tmain()',
    "SELECT * FROM t WHERE id >= 42;",
    '<div class="x">&nbsp;</div>',
    "x_1 = y__2 -> z",
]
NUMBERS = [
    "12345", "3.14159", "1,234,567.89", "2024-05-17", "+1 (555) 010-9999", "0x1F", "1e-10",
    "100%", "½ ² ③ Ⅻ", "٣٤٥", "१२३", "007", "42nd", "v2.0.1",
]
EMOJI = ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🇫🇷", "☀️", "🍎🍊", "❤️‍🔥", "✨🎉"]
SPACES = [
    " ", "  ", "   ", "\n", "\n\n", "\n\n\n", "\t", " \n ", "\r\n", "    \n",
    "\u00a0", "\u3000", "\u2028", "\x0b", "\x0c", "\x85", "\x1c",
]
PUNCTUATION = [
    "!!!", "...", "—", "«»", "¿¡", "()", "[]", "{}", "?!", "“quoted”", "‘single’", "#@$%^&*",
    "---", "___", "///", "\\\\", "<|", "|>", "<|im",
]
ACCENTED = [
    "Café", "déjà vu", "naïve", "Ångström", "façade", "Øresund", "Straße", "Łódź",
    "Crème brûlée", "e\u0301te\u0301", "n\u0303", "Ελληνικά", "Русский текст", "عربي", "हिन्दी",
]
FRAGMENTS = ENGLISH + CHINESE + CODE + NUMBERS + EMOJI + PUNCTUATION + ACCENTED


def mixed_texts(count: int = 500, seed: int = 0) -> list[str]:
    """Deterministic strings mixing every kind of fragment, separated by runs of whitespace."""
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        parts = []
        for _ in range(rng.randint(1, 8)):
            parts.append(rng.choice(FRAGMENTS))
            parts.append(rng.choice(SPACES) if rng.random() < 0.6 else "")
            if rng.random() < 0.2:
                parts.append(str(rng.randint(0, 10 ** rng.randint(1, 9))))
        texts.append("".join(parts))
    return texts


TEXTS = mixed_texts()
