"""The command line: ``python -m tinyllm_lib {demo,train,eval,chat,pretrain,data}``.

Each command is a thin layer over the library: it parses flags, loads files, calls the
same functions the book calls, and prints. Outputs go under ``outputs/`` (models and
logs); the project's data and shipped base model live in ``data/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from .chat import DEFAULT_SYSTEM, Message
from .checkpoint import load_pretrained, save_pretrained
from .config import PRESETS, LoRAConfig, TrainConfig
from .data import load_conversations, load_task_names, tokenize_conversations
from .evaluate import EvalReport, compare_reports, evaluate
from .formats.peft_adapter import load_adapter, save_adapter
from .lora import apply_lora, trainable_report
from .model import TinyLLM
from .sampling import SamplingConfig, reply_stream
from .tokenizer import Tokenizer
from .train import Trainer

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
BASE_DIR = DATA_DIR / "base"
OUTPUTS = Path("outputs")

# The seed's 1e-4 suits LoRA on a large model; on this 5M-parameter base, 3 epochs at 1e-4
# barely move exact match (experiments/results/outcomes.md has the measurement). LoRA's
# few, zero-initialised parameters take a higher rate than full fine-tuning, which can
# overwrite what pretraining stored. Each default is the best of the rates tried on the
# shipped base (experiments/results/lr_sweep.md): adapters on every linear layer train
# about five times the parameters of q_proj, v_proj (197,120 against 40,960), move the
# output further per step, and do best at a third of their rate.
LORA_LR = 3e-3  # q_proj, v_proj (the default adapter) or any other list of modules
LORA_ALL_LINEAR_LR = 1e-3
FULL_LR = 3e-4
COMPILE_HELP = "torch.compile the training step: faster steps after a minute of compiling"


class CLIError(Exception):
    """A problem with the command line or its files, reported without a traceback."""


# ----------------------------------------------------------------------------- helpers


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def existing_path(text: str) -> Path:
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{path} does not exist")
    return path


def load_model(model_dir: Path, adapter_dir: Path | None) -> tuple[TinyLLM, Tokenizer]:
    """A saved model, with a LoRA adapter merged in when one is given."""
    model, tokenizer = load_pretrained(model_dir)
    if adapter_dir is not None:
        load_adapter(model, adapter_dir)
    return model.eval(), tokenizer


def add_sampling_flags(parser: argparse.ArgumentParser) -> None:
    defaults = SamplingConfig()
    parser.add_argument("--temperature", type=float, default=defaults.temperature,
                        help="0 = greedy (default %(default)s)")
    parser.add_argument("--top-k", type=int, default=defaults.top_k,
                        help="keep the k most likely tokens; 0 = off (default %(default)s)")
    parser.add_argument("--top-p", type=float, default=defaults.top_p,
                        help="keep the smallest set this likely (default %(default)s)")
    parser.add_argument("--repetition-penalty", type=positive_float,
                        default=defaults.repetition_penalty)
    parser.add_argument("--max-new-tokens", type=positive_int, default=defaults.max_new_tokens)
    parser.add_argument("--seed", type=int, default=None)


def sampling_from_args(args: argparse.Namespace) -> SamplingConfig:
    try:
        return SamplingConfig(
            temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
            repetition_penalty=args.repetition_penalty, max_new_tokens=args.max_new_tokens,
            seed=args.seed,
        )
    except ValueError as err:  # names the field, e.g. "top_p must be in [0, 1]"
        raise CLIError(f"sampling flags: {err}") from None


def print_reply(
    model: TinyLLM, tokenizer: Tokenizer, messages: Sequence[Message], sampling: SamplingConfig
) -> str:
    """Stream the assistant's reply to the terminal; return it."""
    pieces = []
    for piece in reply_stream(model, tokenizer, messages, sampling):
        print(piece, end="", flush=True)
        pieces.append(piece)
    print()
    return "".join(pieces)


# ------------------------------------------------------------------------------ commands


def cmd_data(args: argparse.Namespace) -> None:
    from .world import write_dataset

    start = time.time()
    paths = write_dataset(args.out, seed=args.seed)
    for path in paths.values():
        print(f"{path}  {path.stat().st_size / 1e6:.2f} MB")
    print(f"wrote {len(paths)} files in {time.time() - start:.1f} s")


def cmd_pretrain(args: argparse.Namespace) -> None:
    from .pretrain import pretrain
    from .world import load_corpus

    documents = load_corpus(args.corpus)
    config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr,
        warmup_steps=args.warmup_steps, max_steps=args.max_steps, eval_every=args.eval_every,
        save_every=args.save_every, seed=args.seed, weight_decay=0.1, bf16=args.bf16,
        compile=args.compile,
    )
    model_config = PRESETS[args.preset]
    if args.num_layers is not None:
        model_config = dataclasses.replace(model_config, num_layers=args.num_layers)
    start = time.time()
    result = pretrain(
        documents, model_config, config, args.out,
        run_dir=OUTPUTS / "runs" / f"pretrain-{args.out.name}", log_dir=OUTPUTS / "logs",
        resume=args.resume,
    )
    minutes = (time.time() - start) / 60
    val = result.train.best_val_loss
    quality = f"validation perplexity {math.exp(val):.2f}" if val is not None else "no validation"
    print(f"pretrained on {result.train_blocks} blocks in {minutes:.1f} min; {quality}; "
          f"saved to {args.out}")


def default_lr(args: argparse.Namespace) -> float:
    """The learning rate ``train`` uses when ``--lr`` is not given."""
    if args.full:
        return FULL_LR
    return LORA_ALL_LINEAR_LR if args.lora_targets == "all-linear" else LORA_LR


def cmd_train(args: argparse.Namespace) -> None:
    model, tokenizer = load_pretrained(args.base)
    max_len = args.max_len or model.config.max_seq_len
    train_examples = tokenize_conversations(tokenizer, load_conversations(args.data), max_len)
    val_examples = (tokenize_conversations(tokenizer, load_conversations(args.val), max_len)
                    if args.val else [])
    if args.full:
        print("full fine-tuning: every parameter is trained")
    else:
        targets = "all-linear" if args.lora_targets == "all-linear" else tuple(
            args.lora_targets.split(","))
        torch.manual_seed(args.seed)  # the LoRA A matrices are random
        apply_lora(model, LoRAConfig(rank=args.lora_rank, alpha=args.lora_alpha,
                                     dropout=args.lora_dropout, target_modules=targets))
    print(trainable_report(model))
    config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, grad_accum=args.grad_accum,
        lr=args.lr or default_lr(args), warmup_steps=args.warmup_steps,
        max_steps=args.max_steps, eval_every=args.eval_every, patience=args.patience,
        save_every=args.save_every, seed=args.seed, bf16=args.bf16,
        gradient_checkpointing=args.gradient_checkpointing, compile=args.compile,
    )
    out = args.out or OUTPUTS / "models" / ("full" if args.full else "lora")
    trainer = Trainer(model, train_examples, val_examples, config, pad_id=tokenizer.pad_id,
                      out_dir=out, log_dir=OUTPUTS / "logs", run_name=out.name)
    result = trainer.fit(resume=args.resume)
    print(f"{result.reason}; {result.steps} steps; best validation loss "
          f"{result.best_val_loss if result.best_val_loss is not None else 'n/a'}")
    if args.full:
        save_pretrained(model, tokenizer, out / "model")
        print(f"saved the model to {out / 'model'}")
    else:
        save_adapter(model, out / "adapter")
        print(f"saved the adapter to {out / 'adapter'} (load it with --adapter)")


def cmd_eval(args: argparse.Namespace) -> None:
    model, tokenizer = load_model(args.model, args.adapter)
    conversations = load_conversations(args.data)
    tasks = load_task_names(args.data)
    if args.limit:
        conversations, tasks = conversations[: args.limit], tasks[: args.limit]
    report = evaluate(model, tokenizer, conversations, tasks, max_new_tokens=args.max_new_tokens,
                      failures_per_task=args.failures)
    print(report.format_table())
    if args.compare:
        before = EvalReport.from_dict(json.loads(args.compare.read_text(encoding="utf-8")))
        print(compare_reports(before, report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")


CHAT_HELP = """commands: /reset (forget the conversation), /system TEXT (new system prompt),
/set NAME VALUE (temperature, top_k, top_p, repetition_penalty, max_new_tokens, seed),
/show (settings), /help; Ctrl-D or /quit to leave, Ctrl-C stops a reply."""


def chat_command(line: str, state: dict, sampling: SamplingConfig) -> SamplingConfig:
    """Apply one ``/command`` of the chat session; returns the (maybe changed) sampling."""
    name, _, rest = line[1:].partition(" ")
    if name == "reset":
        state["messages"] = [{"role": "system", "content": state["system"]}]
        print("(conversation cleared)")
    elif name == "system":
        state["system"] = rest.strip() or DEFAULT_SYSTEM
        state["messages"] = [{"role": "system", "content": state["system"]}]
        print(f"(system prompt: {state['system']}; conversation cleared)")
    elif name == "set":
        field, _, value = rest.strip().partition(" ")
        kinds = {"temperature": float, "top_p": float, "repetition_penalty": float,
                 "top_k": int, "max_new_tokens": int, "seed": int}
        if field not in kinds:
            print(f"(unknown setting {field!r}; one of {', '.join(kinds)})")
            return sampling
        try:
            sampling = SamplingConfig(**{**vars(sampling), field: kinds[field](value)})
        except ValueError as err:
            print(f"({err})")
            return sampling
        print(f"({field} = {getattr(sampling, field)})")
    elif name == "show":
        print(f"({', '.join(f'{k}={v}' for k, v in vars(sampling).items())})")
    else:
        print(CHAT_HELP)
    return sampling


def cmd_chat(args: argparse.Namespace) -> None:
    model, tokenizer = load_model(args.model, args.adapter)
    sampling = sampling_from_args(args)
    state = {"system": args.system, "messages": [{"role": "system", "content": args.system}]}
    print(f"TinyLLM chat ({model.config.hidden_size}d x {model.config.num_layers} layers). "
          "Type /help for commands.")
    while True:
        try:
            line = input("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return
        if line.startswith("/"):
            sampling = chat_command(line, state, sampling)
            continue
        state["messages"].append({"role": "user", "content": line})
        print("assistant> ", end="", flush=True)
        try:
            reply = print_reply(model, tokenizer, state["messages"], sampling)
        except KeyboardInterrupt:
            print("\n(reply interrupted)")
            state["messages"].pop()
            continue
        state["messages"].append({"role": "assistant", "content": reply})


def cmd_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(seed=args.seed)


# -------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tinyllm", description="TinyLLM: instruction tuning from scratch, on a CPU."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="base model, LoRA fine-tune, before and after, a chat")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=cmd_demo)

    data = commands.add_parser("data", help="regenerate the synthetic world's data files")
    data.add_argument("--out", type=Path, default=DATA_DIR)
    data.add_argument("--seed", type=int, default=1234)
    data.set_defaults(run=cmd_data)

    pre = commands.add_parser("pretrain", help="train the tokenizer and base model from scratch")
    pre.add_argument("--corpus", type=existing_path, default=DATA_DIR / "corpus.jsonl")
    pre.add_argument("--preset", choices=sorted(PRESETS), default="base")
    pre.add_argument("--num-layers", type=positive_int, default=None,
                     help="override the preset's number of transformer blocks")
    pre.add_argument("--out", type=Path, default=OUTPUTS / "models" / "base")
    pre.add_argument("--epochs", type=positive_int, default=1)
    pre.add_argument("--batch-size", type=positive_int, default=16)
    pre.add_argument("--grad-accum", type=positive_int, default=1)
    pre.add_argument("--lr", type=positive_float, default=2e-3)
    pre.add_argument("--warmup-steps", type=int, default=100)
    pre.add_argument("--max-steps", type=positive_int, default=None)
    pre.add_argument("--eval-every", type=positive_int, default=200)
    pre.add_argument("--save-every", type=positive_int, default=200)
    pre.add_argument("--seed", type=int, default=0)
    pre.add_argument("--bf16", action="store_true", help="bf16 autocast")
    pre.add_argument("--compile", action="store_true", help=COMPILE_HELP)
    pre.add_argument("--resume", action="store_true")
    pre.set_defaults(run=cmd_pretrain)

    train = commands.add_parser("train", help="fine-tune the base model (LoRA or --full)")
    train.add_argument("--base", type=existing_path, default=BASE_DIR)
    train.add_argument("--data", type=existing_path, default=DATA_DIR / "train.jsonl")
    train.add_argument("--val", type=existing_path, default=DATA_DIR / "val.jsonl")
    train.add_argument("--epochs", type=positive_int, default=3)
    train.add_argument("--batch-size", type=positive_int, default=4, help="the micro-batch")
    train.add_argument("--grad-accum", type=positive_int, default=1)
    train.add_argument("--lr", type=positive_float, default=None,
                       help=f"peak learning rate (default {LORA_LR} LoRA, "
                            f"{LORA_ALL_LINEAR_LR} with --lora-targets all-linear, {FULL_LR} "
                            "--full: the best rates tried, experiments/results/lr_sweep.md)")
    train.add_argument("--warmup-steps", type=int, default=10)
    train.add_argument("--lora-rank", type=positive_int, default=8)
    train.add_argument("--lora-alpha", type=positive_float, default=16.0)
    train.add_argument("--lora-dropout", type=float, default=0.0)
    train.add_argument("--lora-targets", default="q_proj,v_proj",
                       help='comma-separated module names, or "all-linear"')
    train.add_argument("--full", action="store_true", help="train every parameter, no LoRA")
    train.add_argument("--max-steps", type=positive_int, default=None)
    train.add_argument("--max-len", type=positive_int, default=None,
                       help="token limit per conversation (default: the model's context)")
    train.add_argument("--eval-every", type=positive_int, default=250)
    train.add_argument("--patience", type=positive_int, default=None)
    train.add_argument("--save-every", type=positive_int, default=None)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--bf16", action="store_true", help="bf16 autocast")
    train.add_argument("--gradient-checkpointing", action="store_true",
                       help="recompute activations in backward: less memory, more time")
    train.add_argument("--compile", action="store_true", help=COMPILE_HELP)
    train.add_argument("--out", type=Path, default=None,
                       help="output folder (default outputs/models/lora or outputs/models/full)")
    train.add_argument("--resume", action="store_true", help="continue from --out's checkpoint")
    train.set_defaults(run=cmd_train)

    ev = commands.add_parser("eval", help="exact match per task and perplexity")
    ev.add_argument("--model", type=existing_path, default=BASE_DIR)
    ev.add_argument("--adapter", type=existing_path, default=None)
    ev.add_argument("--data", type=existing_path, default=DATA_DIR / "test.jsonl")
    ev.add_argument("--limit", type=positive_int, default=None, help="first N conversations")
    ev.add_argument("--max-new-tokens", type=positive_int, default=32)
    ev.add_argument("--failures", type=positive_int, default=3,
                    help="wrong answers kept per task in the report (default 3)")
    ev.add_argument("--json", type=Path, default=None, help="also write the report here")
    ev.add_argument("--compare", type=existing_path, default=None,
                    help="a previous --json report to show before/after")
    ev.set_defaults(run=cmd_eval)

    chat = commands.add_parser("chat", help="talk to a model in the terminal")
    chat.add_argument("--model", type=existing_path, default=BASE_DIR)
    chat.add_argument("--adapter", type=existing_path, default=None)
    chat.add_argument("--system", default=DEFAULT_SYSTEM)
    add_sampling_flags(chat)
    chat.set_defaults(run=cmd_chat)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except (CLIError, ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"tinyllm {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0
