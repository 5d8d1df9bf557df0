"""tinyllm_lib: a small, honest library for learning how LLMs are instruction-tuned.

The names most programs need are here; each lives in the module of its concept:
``config`` (the dataclasses and their defaults), ``model`` (TinyLLM), ``tokenizer``,
``chat`` (ChatML), ``data`` (datasets, batches), ``lora``, ``train`` (the step, the
loop, resume state), ``evaluate``, ``sampling`` (generation), ``checkpoint`` (whole
models), ``formats/`` (other tools' files: Hugging Face Llama, PEFT adapters) and
``world/`` (the synthetic world). ``plots`` and ``playground`` need the ``[book]`` extra
(matplotlib, ipywidgets) and are imported on their own, as are ``engine`` (batched
decoding for many requests) and ``serve`` (the OpenAI-compatible server over it, which
needs the ``[serve]`` extra: FastAPI, uvicorn).
"""

from .chat import encode_chat, format_chatml
from .checkpoint import load_pretrained, save_pretrained
from .config import LoRAConfig, ModelConfig, TrainConfig
from .data import load_conversations, tokenize_conversations
from .evaluate import evaluate, exact_match, perplexity
from .formats.peft_adapter import load_adapter, save_adapter
from .lora import apply_lora, disable_adapters, merge_lora, trainable_report, unmerge_lora
from .model import TinyLLM
from .sampling import SamplingConfig, generate, reply, reply_stream
from .tokenizer import Tokenizer
from .train import Trainer, train_step

__version__ = "0.1.0"

__all__ = [
    "LoRAConfig", "ModelConfig", "SamplingConfig", "TinyLLM", "Tokenizer", "TrainConfig",
    "Trainer", "apply_lora", "disable_adapters", "encode_chat", "evaluate", "exact_match",
    "format_chatml", "generate", "load_adapter", "load_conversations", "load_pretrained",
    "merge_lora", "perplexity", "reply", "reply_stream", "save_adapter", "save_pretrained",
    "tokenize_conversations", "train_step", "trainable_report", "unmerge_lora",
]
