"""The command line: ``python -m tinyllm_lib {demo,train,eval,chat,pretrain,data,export,serve}``.

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
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .chat import default_system
from .checkpoint import SMOLLM2, load_pretrained, resolve_source, save_pretrained
from .config import (
    BASE_DIR,
    DATA_DIR,
    FULL_LR,
    LORA_ALL_LINEAR_LR,
    LORA_LR,
    PRESETS,
    TRAIN_PRESETS,
    ConfigError,
    DPOConfig,
    LoRAConfig,
    TrainConfig,
    recommended_lr,
)
from .data import load_conversations, load_task_names, tokenize_conversations
from .evaluate import EvalReport, compare_reports, evaluate
from .formats.gguf import GGUF_TYPES, write_gguf
from .formats.peft_adapter import load_adapter, save_adapter
from .lora import ALL_LINEAR, apply_lora, merge_and_unload, merge_lora, trainable_report
from .model import TinyLLM
from .quant import quantize_model
from .sampling import SamplingConfig, print_piece, reply
from .tokenizer import Tokenizer
from .train import Trainer

OUTPUTS = Path("outputs")
MODEL_NAMES = (SMOLLM2,)
"""The model names ``--base`` and ``--model`` accept besides paths (``load_pretrained``'s)."""
DEFAULT_MAX_LEN = 1024
"""``train``'s token limit per conversation when ``--max-len`` is not given and the model's
context is longer: SmolLM2's 8192 tokens would let one long conversation take minutes
and gigabytes per step on a CPU (attention grows with the square of the length)."""

class CLIError(Exception):
    """A problem with the command line or its files, reported without a traceback."""


# ----------------------------------------------------------------------------- helpers


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def existing_path(text: str) -> Path:
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{path} does not exist")
    return path


def model_source(text: str) -> str | Path:
    """``--base`` / ``--model``: what ``load_pretrained`` loads, checked before any loading.

    A model folder or a ``.gguf`` file that exists, or a known name (``MODEL_NAMES``),
    whose file must be installed; argparse puts the flag's name before the error.
    """
    if text in MODEL_NAMES and not Path(text).exists():
        try:
            resolve_source(text)  # the package holding the file is installed
        except FileNotFoundError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
        return text
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(
            f"{path} does not exist (expected a model folder, a .gguf file or one of the "
            f"names {', '.join(MODEL_NAMES)})")
    if not path.is_dir() and path.suffix != ".gguf":
        raise argparse.ArgumentTypeError(
            f"{path} is a file but not a .gguf one; a model is a folder (save_pretrained's, "
            "or a Llama checkpoint's) or a .gguf file")
    return path


def load_model(
    source: str | Path, adapters: Path | Sequence[Path] | None = None, qlora: bool = False,
) -> tuple[TinyLLM, Tokenizer]:
    """A model (``model_source``) with LoRA adapters applied in order, when given.

    Each adapter but the last is merged into the weights before the next is loaded, so an
    adapter trained on top of another (``tinyllm dpo --sft-adapter``) sees the model it
    was trained on: ``--adapter SFT --adapter DPO``. With ``qlora`` the last adapter runs
    on the base frozen in NF4, as ``train --qlora`` trained it (the merges before it are
    done in full precision, as training did them).
    """
    model, tokenizer = load_pretrained(source)
    adapters = [adapters] if isinstance(adapters, Path) else list(adapters or [])
    for adapter_dir in adapters[:-1]:
        merge_and_unload(load_adapter(model, adapter_dir))
    if qlora:
        quantize_model(model)
    if adapters:
        load_adapter(model, adapters[-1])
    return model.eval(), tokenizer


# Flags named otherwise than their field (``--lora-targets`` is shorter than
# ``--lora-target-modules``), and fields whose flag text needs its own parser.
FLAG_NAMES = {"target_modules": "targets", "loss_type": "loss"}


def parse_targets(text: str) -> tuple[str, ...] | str:
    """``--lora-targets``: ``q_proj,v_proj`` or ``all-linear``."""
    return text if text == "all-linear" else tuple(name for name in text.split(",") if name)


FLAG_PARSERS: dict[str, Callable[[str], Any]] = {"target_modules": parse_targets}


def flag_name(field: str, prefix: str = "") -> str:
    return "--" + prefix + FLAG_NAMES.get(field, field).replace("_", "-")


def flag_dest(field: str, prefix: str = "") -> str:
    return flag_name(field, prefix)[2:].replace("-", "_")


def scalar_type(annotation: Any) -> Any:
    """``int`` for ``int | None``: the type a flag's text is parsed as."""
    if isinstance(annotation, types.UnionType):
        kinds = [kind for kind in typing.get_args(annotation) if kind is not type(None)]
        if len(kinds) == 1:
            return kinds[0]
    return annotation


def shown_default(value: Any) -> str:
    if value is None or value is False:
        return "off"
    if value is True:
        return "on"
    if isinstance(value, tuple):
        return ",".join(map(str, value)) if all(isinstance(v, str) for v in value) else (
            " ".join(map(str, value)))
    return str(value)


def add_config_flags(
    parser: argparse.ArgumentParser, dest: str, defaults: Any, prefix: str = "",
    help_overrides: dict[str, str] | None = None,
) -> None:
    """A flag for every field of the config ``defaults`` (a dataclass instance).

    ``batch_size`` becomes ``--batch-size`` (``--lora-rank`` with ``prefix="lora-"``), its
    type comes from the field's annotation, its default from ``defaults`` and its help
    from the field's ``setting`` text, so the flags can never drift from the config.
    After parsing, ``parse`` builds the config as ``args.<dest>`` (``config_from_flags``),
    and a value the config refuses becomes an error naming the flag.
    """
    hints = typing.get_type_hints(type(defaults))
    for field in dataclasses.fields(defaults):
        default = getattr(defaults, field.name)
        text = (help_overrides or {}).get(field.name) or (
            f"{field.metadata.get('help', '')} (default: {shown_default(default)})")
        kind = scalar_type(hints[field.name])
        options: dict[str, Any] = {"default": default, "help": text,
                                   "dest": flag_dest(field.name, prefix)}
        if field.name in FLAG_PARSERS:
            options["type"] = FLAG_PARSERS[field.name]
        elif kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is tuple:
            item, *_ = typing.get_args(kind)
            options.update(type=item, nargs=len(typing.get_args(kind)))
        else:
            options["type"] = kind
        parser.add_argument(flag_name(field.name, prefix), **options)
    groups = parser.get_default("config_groups") or []
    parser.set_defaults(config_groups=[*groups, (dest, defaults, prefix)], parser=parser)


def config_from_flags(args: argparse.Namespace, defaults: Any, prefix: str = "") -> Any:
    """The config of type ``type(defaults)`` that the parsed flags describe.

    A flag left at ``None`` whose field has a value (``train``'s ``--lr``: the rate is
    chosen later, by ``config.recommended_lr``) keeps the value of ``defaults``.
    """
    values = {}
    for field in dataclasses.fields(defaults):
        value = getattr(args, flag_dest(field.name, prefix))
        values[field.name] = getattr(defaults, field.name) if value is None else value
    try:
        return type(defaults)(**values)
    except ConfigError as err:
        raise CLIError(f"argument {flag_name(err.field, prefix)}: {err.rule}, "
                       f"got {err.value!r}") from None


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
    model_config = PRESETS[args.preset]
    if args.num_layers is not None:
        model_config = dataclasses.replace(model_config, num_layers=args.num_layers)
    start = time.time()
    result = pretrain(
        documents, model_config, args.train_config, args.out,
        run_dir=OUTPUTS / "runs" / f"pretrain-{args.out.name}", log_dir=OUTPUTS / "logs",
        resume=args.resume,
    )
    minutes = (time.time() - start) / 60
    val = result.train.best_val_loss
    quality = f"validation perplexity {math.exp(val):.2f}" if val is not None else "no validation"
    print(f"pretrained on {result.train_blocks} blocks in {minutes:.1f} min; {quality}; "
          f"saved to {args.out}")


def lora_settings(args: argparse.Namespace) -> LoRAConfig | None:
    """The adapter ``train`` and ``dpo`` train (``None``: ``--full``). Without
    ``--lora-targets``, QLoRA adapts every linear layer, as the QLoRA paper does (its
    finding: adapting all of them is what matches 16-bit fine-tuning); LoRA adapts
    ``q_proj`` and ``v_proj``."""
    if args.full:
        return None
    if args.qlora and args.lora_targets is None:
        return dataclasses.replace(args.lora_config, target_modules=ALL_LINEAR)
    return args.lora_config


def train_settings(args: argparse.Namespace) -> tuple[TrainConfig, LoRAConfig | None]:
    """``train``'s loop settings and adapter (``None``: ``--full``), with the learning rate
    ``config.recommended_lr`` gives the method when ``--lr`` is not set."""
    lora = lora_settings(args)
    config = args.train_config
    if args.lr is None:
        config = dataclasses.replace(config, lr=recommended_lr(lora))
    return config, lora


def start_model(args: argparse.Namespace,
                lora: LoRAConfig | None) -> tuple[TinyLLM, Tokenizer]:
    """The model ``train`` and ``dpo`` train: the base, ``--sft-adapter`` merged in (for
    DPO that makes the SFT model the reference), then a fresh adapter on top, or every
    parameter when ``lora`` is None (``--full``). With ``--qlora`` the base's linear
    layers are frozen in NF4 first (after the SFT merge, which needs full precision)."""
    if args.qlora and lora is None:
        raise CLIError("argument --qlora: QLoRA trains LoRA on a frozen 4-bit base; "
                       "it cannot be combined with --full")
    model, tokenizer = load_pretrained(args.base)
    if args.sft_adapter is not None:
        merge_and_unload(load_adapter(model, args.sft_adapter))
    if args.qlora:
        quantize_model(model)  # NF4 + double quantization, every linear but lm_head
        print("QLoRA: the base's linear layers are frozen in NF4")
    if lora is None:
        model.requires_grad_(True)
        print("full fine-tuning: every parameter is trained")
    else:
        torch.manual_seed(args.train_config.seed)  # the LoRA A matrices are random
        apply_lora(model, lora)
    print(trainable_report(model))
    return model, tokenizer


def save_trained(args: argparse.Namespace, model: TinyLLM, tokenizer: Tokenizer,
                 out: Path) -> None:
    """What ``train`` and ``dpo`` keep: the whole model with ``--full``, else the adapter,
    and how to load it (after ``--sft-adapter``'s, which it was trained on top of)."""
    if args.full:
        save_pretrained(model, tokenizer, out / "model")
        print(f"saved the model to {out / 'model'}")
        return
    save_adapter(model, out / "adapter")
    on_top = f"--adapter {args.sft_adapter} " if args.sft_adapter else ""
    print(f"saved the adapter to {out / 'adapter'} (load it with {on_top}"
          f"--adapter {out / 'adapter'})")


def cmd_train(args: argparse.Namespace) -> None:
    config, lora = train_settings(args)
    model, tokenizer = start_model(args, lora)
    max_len = args.max_len or min(model.config.max_seq_len, DEFAULT_MAX_LEN)
    train_examples = tokenize_conversations(tokenizer, load_conversations(args.data), max_len)
    val_examples = (tokenize_conversations(tokenizer, load_conversations(args.val), max_len)
                    if args.val else [])
    out = args.out or OUTPUTS / "models" / ("full" if args.full else "lora")
    trainer = Trainer(model, train_examples, val_examples, config, pad_id=tokenizer.pad_id,
                      out_dir=out, log_dir=OUTPUTS / "logs", run_name=out.name)
    result = trainer.fit(resume=args.resume)
    print(f"{result.reason}; {result.steps} steps; best validation loss "
          f"{result.best_val_loss if result.best_val_loss is not None else 'n/a'}")
    save_trained(args, model, tokenizer, out)


def cmd_preferences(args: argparse.Namespace) -> None:
    from .dpo import sample_preferences, write_preferences

    model, tokenizer = load_model(args.model, args.adapter)
    conversations = load_conversations(args.data)[: args.limit]
    start = time.time()
    pairs = sample_preferences(model, tokenizer, conversations, samples=args.samples,
                               temperature=args.temperature, seed=args.seed)
    write_preferences(args.out, pairs)
    print(f"{len(pairs)} pairs from {len(conversations)} prompts ({args.samples} samples each) "
          f"in {time.time() - start:.0f} s; wrote {args.out}")


def cmd_dpo(args: argparse.Namespace) -> None:
    from .dpo import DPOObjective, encode_pairs, load_preferences, precompute_reference

    model, tokenizer = start_model(args, lora_settings(args))
    max_len = args.max_len or min(model.config.max_seq_len, DEFAULT_MAX_LEN)
    train = encode_pairs(tokenizer, load_preferences(args.data), max_len, f"{args.data}: pair")
    val = (encode_pairs(tokenizer, load_preferences(args.val), max_len, f"{args.val}: pair")
           if args.val else [])
    config, dpo = args.train_config, args.dpo_config
    if dpo.precompute_ref or args.full:
        start = time.time()
        precompute_reference(model, train + val, config.batch_size, dpo.loss_type == "ipo")
        print(f"reference log-probabilities of {len(train) + len(val)} pairs computed in "
              f"{time.time() - start:.0f} s")
    out = args.out or OUTPUTS / "models" / "dpo"
    trainer = Trainer(model, train, val, config, pad_id=tokenizer.pad_id, out_dir=out,
                      log_dir=OUTPUTS / "logs", run_name=out.name, objective=DPOObjective(dpo))
    result = trainer.fit(resume=args.resume)
    last = result.history[-1].metrics
    print(f"{result.reason}; {result.steps} steps; last step: "
          + ", ".join(f"{name} {value:.3f}" for name, value in last.items()
                      if not name.startswith("eval_")))
    save_trained(args, model, tokenizer, out)


def cmd_eval(args: argparse.Namespace) -> None:
    model, tokenizer = load_model(args.model, args.adapter, qlora=args.qlora)
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
        state["system"] = rest.strip() or state["default_system"]
        state["messages"] = [{"role": "system", "content": state["system"]}]
        print(f"(system prompt: {state['system']}; conversation cleared)")
    elif name == "set":
        field, _, value = rest.strip().partition(" ")
        kinds = {name: scalar_type(kind)
                 for name, kind in typing.get_type_hints(SamplingConfig).items()}
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
    model, tokenizer = load_model(args.model, args.adapter, qlora=args.qlora)
    sampling = args.sampling
    default = default_system(tokenizer)  # the model's own: SmolLM2's template has its own
    system = default if args.system is None else args.system
    state = {"system": system, "default_system": default,
             "messages": [{"role": "system", "content": system}]}
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
            answer = reply(model, tokenizer, state["messages"], sampling, on_piece=print_piece)
            print()
        except KeyboardInterrupt:
            print("\n(reply interrupted)")
            state["messages"].pop()
            continue
        state["messages"].append({"role": "assistant", "content": answer})


def cmd_serve(args: argparse.Namespace) -> None:
    """An OpenAI-compatible server over the batching engine (``serve.py``, ``engine.py``)."""
    from .engine import Engine  # imported here: the other commands need no FastAPI
    from .serve import Settings, serve

    model, tokenizer = load_model(args.model, args.adapter)
    # Served, an adapter no longer needs to be separate: merged into the weights, each
    # adapted layer is one matrix product per token instead of three.
    if args.adapter:
        merge_and_unload(model)
    name = args.model if args.model in MODEL_NAMES else Path(args.model).name
    max_len = args.max_len or min(model.config.max_seq_len, DEFAULT_MAX_LEN)
    engine = Engine(model, tokenizer, max_batch=args.max_batch, max_len=max_len,
                    batch_invariant=args.batch_invariant)
    settings = Settings(name, api_key=args.api_key, max_tokens_cap=args.max_tokens_cap)
    print(f"serving {name!r} on http://{args.host}:{args.port}/v1 (max batch "
          f"{args.max_batch}); Ctrl-C stops", flush=True)
    serve(engine, settings, args.host, args.port)


EXPORT_GGUF_TYPE = "f16"
"""``export --gguf``'s default type: what llama.cpp's converter writes by default; half of
float32's size, and it moves the logits far less than Q8_0 does (the shipped base: about
0.005 against 0.15 at most; ``tests/test_gguf_export.py`` measures both)."""


def check_export_flags(args: argparse.Namespace) -> None:
    """``export``'s flags that only make sense together; each error names its flag."""
    if args.out is None and args.gguf is None:
        raise CLIError("nothing to write: give --out DIR, --gguf FILE or both")
    if args.adapter is not None and not args.merge_adapter:
        raise CLIError("argument --adapter: a full model holds the adapter only merged into "
                       "its weights; add --merge-adapter (or ship the adapter folder as it is)")
    if args.merge_adapter and args.adapter is None:
        raise CLIError("argument --merge-adapter: there is no --adapter to merge")
    if args.gguf_type is not None and args.gguf is None:
        raise CLIError("argument --gguf-type: there is no --gguf file to write")


def cmd_export(args: argparse.Namespace) -> None:
    check_export_flags(args)
    try:
        model, tokenizer = load_pretrained(args.model, device="cpu")
    except FileNotFoundError as err:
        raise CLIError(f"argument --model: {err}") from None
    if args.adapter is not None:
        merge_lora(load_adapter(model, args.adapter))
    if args.out is not None:
        save_pretrained(model, tokenizer, args.out)
        print(f"saved the model to {args.out}")
    if args.gguf is not None:
        write_gguf(model, tokenizer, args.gguf, args.gguf_type or EXPORT_GGUF_TYPE)
        print(f"wrote {args.gguf} ({args.gguf.stat().st_size / 1e6:.1f} MB)")


def cmd_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(seed=args.seed)


# -------------------------------------------------------------------------------- parser


QLORA_RUN_HELP = ("run on the base frozen in NF4, as train --qlora trained the (last) "
                  "adapter; without it the adapter runs on the full-precision base")


LORA_TARGETS_HELP = {"target_modules": 'comma-separated module names, or "all-linear" '
                     "(default: q_proj,v_proj; all-linear with --qlora)"}


def add_model_flags(parser: argparse.ArgumentParser, what: str, default_out: str) -> None:
    """The flags ``train`` and ``dpo`` share: which model to start from, what to train
    (an adapter or ``--full``), and where the run goes."""
    parser.add_argument("--base", type=model_source, default=BASE_DIR,
                        help=f"{what}: a folder, a .gguf file or {SMOLLM2} (default: data/base)")
    parser.add_argument("--sft-adapter", type=existing_path, default=None,
                        help="an adapter merged into the base first; training starts from "
                        "that model (and for dpo it is the reference)")
    parser.add_argument("--full", action="store_true",
                        help="train every parameter, no LoRA (dpo then precomputes the "
                        "reference)")
    parser.add_argument("--qlora", action="store_true",
                        help="QLoRA: the base's linear layers in NF4 with double "
                        "quantization, LoRA on top (on every linear layer unless "
                        "--lora-targets says otherwise); the adapter loads on the "
                        "full-precision base, or on the 4-bit one with eval --qlora")
    parser.add_argument("--max-len", type=positive_int, default=None,
                        help="token limit per conversation (default: the model's context, "
                        f"at most {DEFAULT_MAX_LEN}); a longer preference pair is an error")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"output folder (default {default_out})")
    parser.add_argument("--resume", action="store_true", help="continue from --out's checkpoint")


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
    pre.add_argument("--resume", action="store_true", help="continue from the run's checkpoint")
    add_config_flags(pre, "train_config", TRAIN_PRESETS["pretrain"])
    pre.set_defaults(run=cmd_pretrain)

    train = commands.add_parser("train", help="fine-tune the base model (LoRA or --full)")
    add_model_flags(train, "the model to fine-tune", "outputs/models/lora or outputs/models/full")
    train.add_argument("--data", type=existing_path, default=DATA_DIR / "train.jsonl",
                       help="training conversations: JSONL, Alpaca or ShareGPT")
    train.add_argument("--val", type=existing_path, default=DATA_DIR / "val.jsonl",
                       help="validation conversations (early stopping, best weights)")
    lr_help = (f"peak learning rate (default {LORA_LR} LoRA, {LORA_ALL_LINEAR_LR} with "
               f"--lora-targets all-linear, {FULL_LR} --full: the best rates tried, "
               "experiments/results/lr_sweep.md)")
    add_config_flags(train, "train_config", TRAIN_PRESETS["finetune"],
                     help_overrides={"lr": lr_help})
    train.set_defaults(lr=None)  # None: config.recommended_lr for the method
    add_config_flags(train, "lora_config", LoRAConfig(), prefix="lora-",
                     help_overrides=LORA_TARGETS_HELP)
    train.set_defaults(lora_targets=None)  # None: lora_settings picks by --qlora
    train.set_defaults(run=cmd_train)

    prefs = commands.add_parser(
        "preferences", help="sample a model on prompts: preference pairs for dpo")
    prefs.add_argument("--model", type=model_source, default=BASE_DIR)
    prefs.add_argument("--adapter", type=existing_path, action="append", default=None,
                       help="the SFT adapter to sample (repeat to stack adapters in order)")
    prefs.add_argument("--data", type=existing_path, default=DATA_DIR / "train.jsonl",
                       help="conversations ending with the expected reply")
    prefs.add_argument("--out", type=Path, required=True, help="the pairs' JSONL file")
    prefs.add_argument("--limit", type=positive_int, default=None, help="first N prompts")
    prefs.add_argument("--samples", type=positive_int, default=4, help="replies per prompt")
    prefs.add_argument("--temperature", type=float, default=0.8)
    prefs.add_argument("--seed", type=int, default=0)
    prefs.set_defaults(run=cmd_preferences)

    dpo = commands.add_parser("dpo", help="preference tuning (DPO) on chosen/rejected pairs")
    add_model_flags(dpo, "the model to tune", "outputs/models/dpo")
    dpo.add_argument("--data", type=existing_path, required=True,
                     help="preference pairs (TRL's standard or conversational shape)")
    dpo.add_argument("--val", type=existing_path, default=None,
                     help="validation pairs (early stopping, best weights)")
    add_config_flags(dpo, "train_config", TRAIN_PRESETS["dpo"])
    add_config_flags(dpo, "dpo_config", DPOConfig())
    add_config_flags(dpo, "lora_config", LoRAConfig(), prefix="lora-",
                     help_overrides=LORA_TARGETS_HELP)
    dpo.set_defaults(lora_targets=None)  # None: lora_settings picks by --qlora
    dpo.set_defaults(run=cmd_dpo)

    ev = commands.add_parser("eval", help="exact match per task and perplexity")
    ev.add_argument("--model", type=model_source, default=BASE_DIR,
                    help=f"a model folder, a .gguf file or {SMOLLM2} (default: data/base)")
    ev.add_argument("--adapter", type=existing_path, action="append", default=None,
                    help="a LoRA adapter; repeat to stack them in order (SFT, then DPO)")
    ev.add_argument("--qlora", action="store_true", help=QLORA_RUN_HELP)
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
    chat.add_argument("--model", type=model_source, default=BASE_DIR,
                      help=f"a model folder, a .gguf file or {SMOLLM2} (default: data/base)")
    chat.add_argument("--adapter", type=existing_path, action="append", default=None,
                      help="a LoRA adapter; repeat to stack them in order (SFT, then DPO)")
    chat.add_argument("--qlora", action="store_true", help=QLORA_RUN_HELP)
    chat.add_argument("--system", default=None,
                      help="the system prompt (default: the model's own, from its chat template)")
    add_config_flags(chat, "sampling", SamplingConfig())
    chat.set_defaults(run=cmd_chat)

    srv = commands.add_parser("serve", help="an OpenAI-compatible HTTP server (batched)")
    srv.add_argument("--model", type=model_source, default=BASE_DIR,
                     help=f"a model folder, a .gguf file or {SMOLLM2} (default: data/base); "
                     "clients name it by its folder or file name")
    srv.add_argument("--adapter", type=existing_path, action="append", default=None,
                     help="a LoRA adapter; repeat to stack them in order (SFT, then DPO)")
    srv.add_argument("--host", default="127.0.0.1",
                     help="the address to listen on (default: 127.0.0.1, this machine only)")
    srv.add_argument("--port", type=positive_int, default=8000)
    srv.add_argument("--api-key", default=None,
                     help="require 'Authorization: Bearer KEY' (default: no key)")
    srv.add_argument("--max-batch", type=positive_int, default=16,
                     help="sequences decoded together in one step (default 16)")
    srv.add_argument("--max-tokens-cap", type=positive_int, default=None,
                     help="the most tokens one reply may ask for (default: the context)")
    srv.add_argument("--max-len", type=positive_int, default=None,
                     help="tokens per sequence, prompt and reply: the KV cache holds "
                     f"max-batch x max-len of them (default: the model's context, at most "
                     f"{DEFAULT_MAX_LEN})")
    srv.add_argument("--batch-invariant", action=argparse.BooleanOptionalAction, default=True,
                     help="run every decode step over all max-batch rows, so that a reply is "
                     "the same under any load (default); --no-batch-invariant runs only the "
                     "rows in use: faster when few clients are there")
    srv.set_defaults(run=cmd_serve)

    export = commands.add_parser(
        "export", help="write a model (with an adapter merged in) as a folder or a GGUF file")
    export.add_argument("--model", default=BASE_DIR,
                        help="a model folder, a .gguf file or smollm2-135m-instruct "
                             "(default: data/base)")
    export.add_argument("--adapter", type=existing_path, default=None,
                        help="a LoRA adapter folder (what train saves); needs --merge-adapter")
    export.add_argument("--merge-adapter", action="store_true",
                        help="fold the adapter into the weights: a plain model, no LoRA code")
    export.add_argument("--out", type=Path, default=None,
                        help="write a Hugging Face model folder here")
    export.add_argument("--gguf", type=Path, default=None, help="write a GGUF file here")
    export.add_argument("--gguf-type", choices=sorted(GGUF_TYPES), default=None,
                        help=f"the GGUF matrices' type (default {EXPORT_GGUF_TYPE}; norms "
                             "stay f32)")
    export.set_defaults(run=cmd_export)
    return parser


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The parsed command line, with each config its flags describe built and checked:
    a value a config refuses exits like any bad flag, with usage and the flag's name."""
    args = build_parser().parse_args(argv)
    try:
        for dest, defaults, prefix in getattr(args, "config_groups", []):
            setattr(args, dest, config_from_flags(args, defaults, prefix))
    except CLIError as err:
        args.parser.error(str(err))  # exits with status 2, as argparse does
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    try:
        args.run(args)
    except (CLIError, ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"tinyllm {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0
