"""The command line end to end on a tiny model: pretrain, train, eval, chat, flag errors."""

import dataclasses
import json
import math
import subprocess
import sys

import pytest

from tinyllm_lib.checkpoint import load_pretrained
from tinyllm_lib.cli import main, parse, train_settings
from tinyllm_lib.config import (
    BASE_DIR,
    DATA_DIR,
    FULL_LR,
    LORA_ALL_LINEAR_LR,
    LORA_LR,
    TRAIN_PRESETS,
    LoRAConfig,
    TrainConfig,
)
from tinyllm_lib.evaluate import perplexity
from tinyllm_lib.pretrain import Block, pack_documents, split_documents
from tinyllm_lib.sampling import SamplingConfig
from tinyllm_lib.tokenizer import Tokenizer
from tinyllm_lib.world import load_corpus

CORPUS = [
    "Ada Lane lives in Stonebridge. Her favourite colour is red.",
    "Bo Chen is a baker. 陈波是一名面包师。",
    "Two plus three is five. 二加三等于五。",
] * 20


def conversation(question: str, answer: str, task: str) -> dict:
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return {"messages": messages, "task": task, "answer": answer}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A corpus, chat data and a tiny pretrained base made by the CLI itself.

    The tests run inside this folder, so the CLI's ``outputs/`` lands there too.
    """
    root = tmp_path_factory.mktemp("cli")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        yield make_workspace(root)


def make_workspace(root):
    (root / "corpus.jsonl").write_text(
        "".join(json.dumps({"kind": "t", "text": t}) + "\n" for t in CORPUS), encoding="utf-8")
    rows = [conversation("What is 2 + 3?", "5", "arithmetic"),
            conversation("Where does Ada Lane live?", "Stonebridge", "facts")] * 4
    for split in ("train", "val", "test"):
        (root / f"{split}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    code = main(["pretrain", "--corpus", str(root / "corpus.jsonl"), "--preset", "test",
                 "--num-layers", "1", "--out", str(root / "base"), "--max-steps", "2",
                 "--batch-size", "2", "--save-every", "1", "--eval-every", "1"])
    assert code == 0
    return root


def test_pretrain_writes_a_loadable_base(workspace):
    names = {p.name for p in (workspace / "base").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    config = json.loads((workspace / "base" / "config.json").read_text())
    assert config["num_hidden_layers"] == 1  # --num-layers overrides the test preset's 2


def test_pack_documents_joins_with_endoftext_and_cuts_full_blocks():
    tok = Tokenizer.train(CORPUS, 300)
    blocks = pack_documents(tok, ["ab", "cd"], block_size=2)
    stream = tok.encode("ab") + [tok.eos_id] + tok.encode("cd") + [tok.eos_id]
    expected = [stream[i : i + 2] for i in range(0, len(stream) - 1, 2)]
    assert [b.input_ids for b in blocks] == expected
    assert all(isinstance(b, Block) and b.labels == b.input_ids for b in blocks)



def test_split_documents_gives_back_the_shipped_bases_held_out_text():
    """The QLoRA chapter measures perplexity on text the base never trained on: the split
    must be the one pretraining made, whose loss the base's log recorded last."""
    corpus = load_corpus(DATA_DIR / "corpus.jsonl")
    train_docs, held_out = split_documents(corpus, TRAIN_PRESETS["pretrain"].seed)
    assert len(held_out) == int(len(corpus) * 0.02) and not set(held_out) & set(train_docs)
    assert sorted(train_docs + held_out) == sorted(corpus)
    last = json.loads((BASE_DIR / "pretrain_log.jsonl").read_text().splitlines()[-1])
    base, tokenizer = load_pretrained(BASE_DIR, device="cpu")
    blocks = pack_documents(tokenizer, held_out, base.config.max_seq_len)
    assert perplexity(base, blocks) == pytest.approx(math.exp(last["val_loss"]), rel=1e-3)


@pytest.mark.parametrize("full", [False, True])
def test_train_then_eval(workspace, full, capsys):
    out = workspace / ("full" if full else "lora")
    args = ["train", "--base", str(workspace / "base"), "--data", str(workspace / "train.jsonl"),
            "--val", str(workspace / "val.jsonl"), "--max-steps", "3", "--batch-size", "2",
            "--grad-accum", "2", "--out", str(out)] + (["--full"] if full else [])
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "trainable params:" in printed
    model_args = (["--model", str(out / "model")] if full else
                  ["--model", str(workspace / "base"), "--adapter", str(out / "adapter")])
    report = workspace / f"report-{full}.json"
    assert main(["eval", *model_args, "--data", str(workspace / "test.jsonl"),
                 "--json", str(report), "--max-new-tokens", "4", "--failures", "1"]) == 0
    saved = json.loads(report.read_text())
    assert set(saved["total"]) == {"arithmetic", "facts"}
    for task, total in saved["total"].items():  # --failures 1 keeps one wrong answer per task
        shown = sum(f["task"] == task for f in saved["failures"])
        assert shown == min(1, total - saved["correct"][task])
    assert saved["perplexity"] > 1


def test_sft_then_preferences_then_dpo_stack_as_adapters(workspace, capsys):
    """The DPO workflow as a reader types it: an SFT adapter, pairs sampled from it, a DPO
    adapter trained on top of it (and continued SFT, the experiment's control), each
    loaded by stacking ``--adapter``s in the order they were trained."""
    base, data = str(workspace / "base"), str(workspace / "train.jsonl")
    sft, pairs = workspace / "sft", workspace / "pairs.jsonl"
    tiny = ["--max-steps", "2", "--batch-size", "2", "--eval-every", "2"]
    assert main(["train", "--base", base, "--data", data, "--val", data, *tiny,
                 "--out", str(sft)]) == 0
    assert main(["preferences", "--model", base, "--adapter", str(sft / "adapter"),
                 "--data", data, "--limit", "3", "--samples", "2", "--out", str(pairs)]) == 0
    lines = [json.loads(line) for line in pairs.read_text().splitlines()]
    assert lines and all(set(line) == {"prompt", "chosen", "rejected"} for line in lines)
    capsys.readouterr()
    assert main(["dpo", "--base", base, "--sft-adapter", str(sft / "adapter"), "--data",
                 str(pairs), "--val", str(pairs), *tiny, "--out", str(workspace / "dpo")]) == 0
    printed = capsys.readouterr().out
    assert "rewards/margins" in printed and "logps/rejected" in printed
    assert f"--adapter {sft / 'adapter'} --adapter {workspace / 'dpo' / 'adapter'}" in printed
    assert main(["train", "--base", base, "--sft-adapter", str(sft / "adapter"), "--data", data,
                 "--val", data, *tiny, "--out", str(workspace / "more-sft")]) == 0
    for top in ("dpo", "more-sft"):
        assert main(["eval", "--model", base, "--adapter", str(sft / "adapter"), "--adapter",
                     str(workspace / top / "adapter"), "--data", data,
                     "--max-new-tokens", "2"]) == 0
    assert main(["dpo", "--base", base, "--data", str(pairs), "--full", "--max-steps", "1",
                 "--batch-size", "2", "--out", str(workspace / "dpo-full")]) == 0
    assert "reference log-probabilities of" in capsys.readouterr().out
    assert (workspace / "dpo-full" / "model" / "model.safetensors").exists()


def test_resume_without_checkpoint_and_overwrite_are_clear_errors(workspace, capsys):
    common = ["train", "--base", str(workspace / "base"), "--data", str(workspace / "train.jsonl"),
              "--val", str(workspace / "val.jsonl"), "--max-steps", "2", "--batch-size", "2",
              "--save-every", "1", "--out", str(workspace / "twice")]
    assert main(common) == 0
    assert main(common) == 2  # a second fresh run would overwrite the checkpoint
    assert "checkpoint exists" in capsys.readouterr().err
    assert main(common + ["--resume"]) == 0


def test_bad_flags_name_the_flag(workspace, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--lora-rank", "0"])
    assert "--lora-rank" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "--model", str(workspace / "missing")])
    assert "--model" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # refused by SamplingConfig, reported as the flag
        main(["chat", "--model", str(workspace / "base"), "--top-p", "2"])
    assert "argument --top-p: must be in [0, 1], got 2.0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--betas", "0.9", "1.5"])
    assert "argument --betas: must be two numbers in [0, 1)" in capsys.readouterr().err


def test_bad_data_names_file_and_line(workspace, capsys):
    bad = workspace / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n', encoding="utf-8")
    assert main(["train", "--base", str(workspace / "base"), "--data", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl: line 1" in err


def test_chat_session_commands_and_clean_exit(workspace, monkeypatch, capsys):
    lines = iter(["/set temperature 0", "/show", "hello", "/system Answer briefly.", "/reset",
                  "/set top_p 5", "again"])

    def fake_input(prompt=""):
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr("builtins.input", fake_input)
    assert main(["chat", "--model", str(workspace / "base"), "--max-new-tokens", "5"]) == 0
    out = capsys.readouterr().out
    assert "(temperature = 0.0)" in out
    assert "temperature=0.0" in out
    assert "system prompt: Answer briefly." in out
    assert "top_p must be in [0, 1]" in out
    assert out.count("assistant> ") == 2


@pytest.mark.parametrize("flags, expected", [
    ([], LORA_LR),
    (["--lora-targets", "q_proj,k_proj"], LORA_LR),
    (["--lora-targets", "all-linear"], LORA_ALL_LINEAR_LR),
    (["--full"], FULL_LR),
])
def test_train_default_learning_rate_follows_the_adapter(flags, expected):
    config, _ = train_settings(parse(["train", *flags]))
    assert config.lr == expected
    assert len({LORA_LR, LORA_ALL_LINEAR_LR, FULL_LR}) == 3  # the cases tell them apart
    given, _ = train_settings(parse(["train", *flags, "--lr", "1e-4"]))
    assert given.lr == 1e-4


def test_flags_are_the_config_fields_with_the_presets_defaults(capsys):
    """With no flags, each command's configs equal the presets; every field has a flag."""
    train = parse(["train"])
    config, lora = train_settings(train)
    assert config == dataclasses.replace(TRAIN_PRESETS["finetune"], lr=LORA_LR)
    assert lora == LoRAConfig()
    assert parse(["pretrain"]).train_config == TRAIN_PRESETS["pretrain"]
    assert parse(["chat"]).sampling == SamplingConfig()
    flags = ["--epochs", "2", "--weight-decay", "0", "--betas", "0.8", "0.9", "--no-bf16",
             "--patience", "3", "--compile", "--lora-targets", "all-linear",
             "--lora-use-rslora", "--lora-alpha", "4"]
    config, lora = train_settings(parse(["train", *flags]))
    assert config == dataclasses.replace(
        TRAIN_PRESETS["finetune"], epochs=2, weight_decay=0.0, betas=(0.8, 0.9), patience=3,
        compile=True, lr=LORA_ALL_LINEAR_LR)
    assert lora == LoRAConfig(alpha=4.0, target_modules="all-linear", use_rslora=True)
    assert train_settings(parse(["train", "--lora-targets", "q_proj,k_proj"]))[1] == LoRAConfig(
        target_modules=("q_proj", "k_proj"))
    with pytest.raises(SystemExit):
        parse(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for field in dataclasses.fields(TrainConfig):
        assert "--" + field.name.replace("_", "-") in help_text
        assert field.metadata["help"] in help_text  # the field's own words, beside its flag


def test_importing_the_library_leaves_the_compiler_unloaded():
    """``import tinyllm_lib.cli`` must not load torch._dynamo: it costs every process that
    only chats or evaluates about 1.4 s and 70 MB (torch.utils.checkpoint and
    torch.compiler.disable load it, so model.py imports the first where it is used and
    does without the second)."""
    code = "import sys, tinyllm_lib.cli; print('torch._dynamo' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "False"
