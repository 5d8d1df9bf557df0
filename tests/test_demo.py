"""``python -m tinyllm_lib demo`` on the shipped base and data: the whole story, run for real.

The demo is the first thing a reader runs, so the suite runs it as they do (about 45 s on
2 cores) and checks that it tells its story: every section appears, the short LoRA
fine-tune raises exact match well above the base model's, and the sampled conversation
shows the test's answers beside the model's replies.
"""

import re

from tinyllm_lib.demo import run_demo


def test_demo_tells_the_story(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything the run writes stays out of the checkout
    run_demo()
    out = capsys.readouterr().out
    for section in ("1. The base model", "2. Exact match before fine-tuning",
                    "3. LoRA fine-tuning", "4. Exact match after fine-tuning",
                    "5. A sampled conversation"):
        assert f"== {section} " in out
    before, after = map(float, re.search(r"mean of tasks\s+([\d.]+)%\s+([\d.]+)%", out).groups())
    assert before <= 10 and after >= before + 20, (before, after)
    assert out.count("(the test's answer: ") == 2
