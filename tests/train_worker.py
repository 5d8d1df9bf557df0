"""A tiny training run for test_train.py, which also runs it in a subprocess and kills it.

``python tests/train_worker.py OUT_DIR [dpo]`` trains slowly (a forward hook sleeps) so that the
test can SIGKILL it part-way; the test then resumes it and compares with a run that never
stopped. The model has dropout, so an exact match needs the RNG state restored too.
With ``dpo`` the run is preference tuning of a LoRA adapter (``synthetic_pairs``).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import torch

from tinyllm_lib.chat import IGNORE_INDEX, EncodedChat
from tinyllm_lib.config import PRESETS, DPOConfig, LoRAConfig, TrainConfig
from tinyllm_lib.dpo import DPOObjective, EncodedPair
from tinyllm_lib.lora import apply_lora
from tinyllm_lib.model import TinyLLM
from tinyllm_lib.train import Trainer

WORKER_CONFIG = TrainConfig(
    epochs=3, batch_size=2, grad_accum=2, lr=3e-3, warmup_steps=3, eval_every=4,
    save_every=3, seed=7,
)


def synthetic_examples(count: int, seed: int, vocab: int = 320) -> list[EncodedChat]:
    """Random sequences of 4 to 19 tokens whose first 1 to 3 tokens are a prompt (label -100)."""
    generator = torch.Generator().manual_seed(seed)
    examples = []
    for _ in range(count):
        length = int(torch.randint(4, 20, (1,), generator=generator))
        prompt = int(torch.randint(1, 4, (1,), generator=generator))
        ids = torch.randint(1, vocab, (length,), generator=generator).tolist()
        examples.append(EncodedChat(ids, [IGNORE_INDEX] * prompt + ids[prompt:]))
    return examples


def synthetic_pairs(count: int, seed: int, vocab: int = 320) -> list[EncodedPair]:
    """``synthetic_examples`` as the chosen replies; each rejected reply is the chosen one
    with its labelled tokens replaced by other random ids (same prompt, same length)."""
    generator = torch.Generator().manual_seed(seed + 1000)
    pairs = []
    for chosen in synthetic_examples(count, seed, vocab):
        ids = [token if label == IGNORE_INDEX else int(torch.randint(1, vocab, (1,),
                                                                     generator=generator))
               for token, label in zip(chosen.input_ids, chosen.labels, strict=True)]
        labels = [IGNORE_INDEX if label == IGNORE_INDEX else token
                  for token, label in zip(ids, chosen.labels, strict=True)]
        pairs.append(EncodedPair(chosen, EncodedChat(ids, labels)))
    return pairs


def make_trainer(out_dir: Path, slow: bool = False, dpo: bool = False) -> Trainer:
    torch.manual_seed(0)
    model = TinyLLM(dataclasses.replace(PRESETS["test"], dropout=0.1))
    if slow:
        model.lm_head.register_forward_hook(lambda *_: time.sleep(0.03))
    if dpo:
        apply_lora(model, LoRAConfig(rank=4, dropout=0.1, target_modules="all-linear"))
        objective = DPOObjective(DPOConfig(beta=0.5))
        train, val = synthetic_pairs(24, 1), synthetic_pairs(8, 2)
    else:
        objective = None
        train, val = synthetic_examples(24, 1), synthetic_examples(8, 2)
    return Trainer(
        model, train, val, WORKER_CONFIG, pad_id=0, out_dir=out_dir, log_dir=out_dir,
        run_name="run", device="cpu", progress=False, objective=objective,
    )


if __name__ == "__main__":
    torch.set_num_threads(1)
    make_trainer(Path(sys.argv[1]), slow=True, dpo=sys.argv[2:] == ["dpo"]).fit()
