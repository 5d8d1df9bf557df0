"""The training loop: accumulation, schedule, clipping, early stopping, checkpoints, resume.

One optimizer step takes the next ``batch_size * grad_accum`` examples of the epoch's seeded
order, splits them into micro-batches of ``batch_size``, backpropagates each, clips the
summed gradient and lets AdamW update the weights. Only parameters with
``requires_grad=True`` are trained, optimized and checkpointed, so full fine-tuning and
LoRA (which freezes the base) run through the same code.

Steps are counted from 1: the record with ``step=5`` describes the fifth optimizer step,
whose learning rate is ``lr_at(4, ...)``.

An epoch has ``ceil(len(train) / (batch_size * grad_accum))`` steps; the last one may be
short (ragged). It is kept, not dropped: the loss is normalised by the tokens actually in
the step, so a short step is just a noisier estimate of the same gradient, and no example
goes unseen. ``max_steps``, when set, replaces ``epochs * steps_per_epoch`` as the length of
the run (training continues into further epochs, each in its own seeded order).

Validation runs every ``eval_every`` steps and after the last step, not at epoch ends, so
that ``patience`` always means the same number of steps whatever the dataset size.

The parts, each usable alone: ``train_step`` is one optimizer step, whole; the *objective*
it minimises is a parameter (``NextTokenNLL`` for pretraining and supervised fine-tuning;
preference tuning brings its own); ``ResumeState`` is what a killed run needs to continue
(in this library "checkpoint" means that, never an exported model); ``Trainer`` loops over
steps, validates, stops early and keeps the best weights. Two seams are where data
parallelism comes in: ``Trainer.step_indices`` (which examples a step takes: a process
takes its share) and ``train_step``'s ``global_count`` (the step's count of label tokens,
summed over processes so every process divides by the same number).
"""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn
from tqdm.auto import tqdm

from .config import TrainConfig, config_to_dict
from .data import Batch, TrainingExample, collate, epoch_order, micro_batches
from .evaluate import mean_nll
from .files import json_bytes, read_json_object, recover_directory, write_directory
from .model import IGNORE_INDEX, default_device, label_token_count, next_token_nll

CHECKPOINT_DIR = "checkpoint"
"""Name of the checkpoint folder inside ``out_dir``."""


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN or infinite; that step was not applied."""


@dataclass
class StepRecord:
    """What one optimizer step did: a line of the JSONL log and of ``TrainResult.history``.

    ``loss`` is the step's mean loss (per label token for next-token prediction, per pair
    for DPO), ``grad_norm`` the global gradient norm *before* clipping (a spike there is
    the first sign of trouble), ``epoch`` the fraction of epochs done, ``val_loss`` the
    validation loss when the step evaluated. ``metrics`` holds what the objective measured
    besides the loss (``Objective.step_metrics``; ``eval_``-prefixed on validation steps).
    """

    step: int
    epoch: float
    loss: float
    lr: float
    grad_norm: float
    tokens_per_s: float
    val_loss: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class TrainerState:
    """The loop's progress: everything a resumed run needs besides weights, optimizer, RNG."""

    step: int = 0
    best_val_loss: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    history: list[StepRecord] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainerState:
        fields = dict(data)
        history = [StepRecord(**record) for record in fields.pop("history")]
        return cls(**fields, history=history)


@dataclass
class TrainResult:
    """How a ``fit`` ended. The model itself then holds the best (or final) weights."""

    steps: int
    best_val_loss: float | None
    best_step: int | None
    restored_best: bool
    stopped_early: bool
    reason: str
    history: list[StepRecord]


@dataclass
class StepLoss:
    """Totals of one optimizer step's micro-batches (plain numbers, no graph attached):
    the summed loss, what it is a sum over (label tokens for next-token prediction), and
    the input tokens read (padding excluded), for the throughput."""

    loss_sum: float
    count: int
    input_tokens: int

    @property
    def mean(self) -> float:
        return self.loss_sum / self.count


def lr_at(step: int, config: TrainConfig, total_steps: int) -> float:
    """Learning rate of the optimizer step with 0-based index ``step`` out of ``total_steps``.

    Warmup ramps linearly, ``lr * (step + 1) / warmup_steps``, so the first step already
    learns and step ``warmup_steps - 1`` reaches the peak: Adam's moment estimates are noisy
    at first, and full-size steps on them can wreck a pretrained model. Then half a cosine
    falls from ``lr`` to ``min_lr_ratio * lr`` at the last step, ``total_steps - 1``: smaller
    steps at the end settle into a minimum instead of bouncing around it.
    """
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    floor = config.lr * config.min_lr_ratio
    decay_steps = max(1, total_steps - 1 - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / decay_steps)
    return floor + (config.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters training changes, by name (a tied matrix appears once)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the trainable parameters: what a checkpoint stores."""
    return {
        name: p.detach().to("cpu", copy=True) for name, p in trainable_parameters(model).items()
    }


def load_trainable_state(
    model: nn.Module, state: dict[str, torch.Tensor], source: str = "state"
) -> None:
    """Copy ``state`` into the model's trainable parameters; names and shapes must match."""
    params = trainable_parameters(model)
    missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
    if missing or unexpected:
        raise ValueError(
            f"{source}: does not match the model's trainable parameters "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    with torch.no_grad():
        for name, param in params.items():
            if state[name].shape != param.shape:
                raise ValueError(
                    f"{source}: {name} has shape {list(state[name].shape)}, "
                    f"the model's has {list(param.shape)}"
                )
            param.copy_(state[name])


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: weight decay on matrices, none on 1-D parameters.

    Decay pulls weights toward zero, which limits how large the many entries of a matrix
    (linear layer, embedding, LoRA A and B) can grow: a regulariser. A 1-D parameter is a
    per-feature gain or offset: an RMSNorm gain's neutral value is 1, not 0, so pulling it
    to zero would silence features rather than regularise, and there are too few of them
    to overfit.
    """
    decay, no_decay = [], []
    for param in trainable_parameters(model).values():
        (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [group for group in groups if group["params"]]


def batch_nll_sum(
    model: nn.Module, input_ids: torch.Tensor, labels: torch.Tensor, bf16: bool = False
) -> torch.Tensor:
    """Summed next-token NLL of one micro-batch: the forward pass and the loss together.

    One function, so that compiling it (``TrainConfig.compile``) puts the loss into the
    same graph as the model: the log-softmax over the vocabulary then fuses with the
    head's output instead of running as separate operators afterwards, which is a few
    percent of a step at the shipped base's size (``bench/results``). ``bf16`` runs the
    forward pass under bf16 autocast; the loss is taken in float32 either way.
    """
    with torch.autocast(input_ids.device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = model(input_ids)
    return next_token_nll(logits, labels)


class Objective(Protocol):
    """What a training step minimises, over what kind of example, and how it is validated.

    A step's loss is ``sum of loss_sum / sum of count`` over its micro-batches: a mean per
    label token for next-token prediction, a mean per preference pair for DPO. The
    objective also knows its examples: how to check them before training (``check``), how
    to batch them (``collate``), and how to score a validation set (``validate``: a dict
    whose ``"loss"`` decides early stopping, plus any other metrics). ``step_metrics``
    hands over, and forgets, what the micro-batches since the last call measured besides
    the loss (DPO's rewards); an objective with nothing more returns ``{}``.
    """

    def check(self, examples: Sequence[Any]) -> None: ...

    def collate(self, examples: Sequence[Any], pad_id: int) -> Batch: ...

    def count(self, batch: Batch) -> int: ...

    def loss_sum(self, model: nn.Module, batch: Batch) -> torch.Tensor: ...

    def step_metrics(self) -> dict[str, float]: ...

    def validate(
        self, model: nn.Module, examples: Sequence[Any], batch_size: int
    ) -> dict[str, float]: ...


class NextTokenNLL:
    """Pretraining's and supervised fine-tuning's objective: the NLL of the label tokens.

    ``compile=True`` runs ``batch_nll_sum`` through ``torch.compile``, which traces the
    model's forward pass and the loss as one graph (the model itself stays as it is for
    evaluation and saving). Fine-tuning batches vary in length; after the first new shape
    torch.compile builds one graph for every length instead of one per length.
    """

    def __init__(self, bf16: bool = False, compile: bool = False) -> None:
        self.bf16 = bf16
        self.nll_sum = torch.compile(batch_nll_sum) if compile else batch_nll_sum

    def check(self, examples: Sequence[TrainingExample]) -> None:
        """Every example has as many labels as ids, and something to learn."""
        for i, example in enumerate(examples):
            if len(example.labels) != len(example.input_ids):
                raise ValueError(
                    f"train example {i}: {len(example.input_ids)} input ids but "
                    f"{len(example.labels)} labels"
                )
            if all(label == IGNORE_INDEX for label in example.labels[1:]):
                raise ValueError(
                    f"train example {i}: no label tokens (labels[1:] are all -100), "
                    "so it would teach nothing"
                )

    def collate(self, examples: Sequence[TrainingExample], pad_id: int) -> Batch:
        return collate(examples, pad_id)

    def count(self, batch: Batch) -> int:
        return label_token_count(batch.labels)

    def loss_sum(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return self.nll_sum(model, batch.input_ids, batch.labels, self.bf16)

    def step_metrics(self) -> dict[str, float]:
        return {}

    def validate(
        self, model: nn.Module, examples: Sequence[TrainingExample], batch_size: int
    ) -> dict[str, float]:
        """The mean NLL per label token, in float32 even under bf16."""
        return {"loss": mean_nll(model, examples, batch_size)}


def local_count(count: int) -> int:
    """A step's count in one process is its own (data parallelism sums it over processes)."""
    return count


def accumulate_gradients(
    model: nn.Module, batches: Sequence[Batch], objective: Objective | None = None,
    global_count: Callable[[int], int] = local_count,
) -> StepLoss:
    """Backpropagate the mean loss over *all* of one optimizer step's micro-batches.

    The objective's count (label tokens, for ``NextTokenNLL``) of every micro-batch is
    summed first; each micro-batch then backpropagates ``loss_sum / total``. Gradients
    add up across ``backward`` calls, so the sum is exactly the gradient of one big
    batch's token mean. Dividing each
    micro-batch by its own token count instead would weigh a token in a short micro-batch
    more than one in a long micro-batch. ``objective`` defaults to ``NextTokenNLL()``;
    ``global_count`` turns this process's count into the step's (``local_count``).
    """
    objective = objective or NextTokenNLL()
    device = next(model.parameters()).device
    total = global_count(sum(objective.count(batch) for batch in batches))
    loss_total = torch.zeros((), device=device)
    for batch in batches:
        batch = batch.to(device)
        loss = objective.loss_sum(model, batch)
        (loss / total).backward()
        loss_total += loss.detach()
    input_tokens = sum(int(batch.attention_mask.sum()) for batch in batches)
    return StepLoss(float(loss_total), total, input_tokens)


def train_step(
    model: nn.Module, batches: Sequence[Batch], optimizer: torch.optim.Optimizer,
    objective: Objective | None = None, max_grad_norm: float = 1.0,
    global_count: Callable[[int], int] = local_count,
) -> tuple[StepLoss, float]:
    """One optimizer step over ``batches`` (its micro-batches): the loss and the gradient
    norm before clipping.

    Accumulate the gradient of the step's mean loss, clip its global norm to
    ``max_grad_norm`` (one bad batch then cannot throw the weights far), update, and clear
    the gradients. A NaN or infinite loss or norm raises ``TrainingDiverged`` *before* the
    update, so the weights stay those of the last good step.
    """
    loss = accumulate_gradients(model, batches, objective, global_count)
    params = list(trainable_parameters(model).values())
    grad_norm = float(nn.utils.clip_grad_norm_(params, max_grad_norm))
    if not (math.isfinite(loss.mean) and math.isfinite(grad_norm)):
        optimizer.zero_grad(set_to_none=True)
        raise TrainingDiverged(f"loss {loss.mean}, gradient norm {grad_norm}")
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss, grad_norm


def _check_settings(config: TrainConfig, has_val: bool, out_dir: Path | None) -> None:
    """What ``TrainConfig`` cannot check alone: the settings that need the Trainer's data."""
    if config.patience is not None and not has_val:
        raise ValueError("TrainConfig: patience needs validation examples")
    if config.save_every is not None and out_dir is None:
        raise ValueError("TrainConfig: save_every needs an out_dir")


def _torch_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


@dataclass
class ResumeState:
    """Everything a run needs to continue exactly where it was saved, and its folder.

    The trainable weights (the frozen ones are rebuilt the same way by the caller), the
    optimizer's moments, the random generators' state (dropout), the loop's progress,
    the best weights so far, and where in which data order the run was, so that a resume
    on other data is refused instead of silently training on a different sequence.
    ``save`` writes the folder whole beside the old one and swaps it in with renames
    (``files.write_directory``), so the folder only ever names a complete state, and a
    run killed mid-save resumes from the previous one.
    """

    trainable: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    rng: dict[str, Any]
    progress: TrainerState
    best_weights: dict[str, torch.Tensor] | None
    data_position: dict[str, Any]
    train_config: dict[str, Any]

    def save(self, directory: Path) -> Path:
        info = {"trainer_state": asdict(self.progress), "data_position": self.data_position,
                "train_config": self.train_config}
        files = {
            "trainable.safetensors": safetensors_bytes(self.trainable),
            "optimizer.pt": _torch_bytes(self.optimizer),
            "rng.pt": _torch_bytes(self.rng),
            "trainer_state.json": json_bytes(info, indent=1),
        }
        if self.best_weights is not None:
            files["best.safetensors"] = safetensors_bytes(self.best_weights)
        return write_directory(directory, files)

    @classmethod
    def load(cls, directory: Path) -> ResumeState:
        path = recover_directory(directory)
        if path is None:
            raise FileNotFoundError(f"{directory}: no checkpoint to resume from")
        info = read_json_object(path / "trainer_state.json")
        best = path / "best.safetensors"
        return cls(
            trainable=load_file(path / "trainable.safetensors"),
            optimizer=torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True),
            rng=torch.load(path / "rng.pt", weights_only=True),
            progress=TrainerState.from_dict(info["trainer_state"]),
            best_weights=load_file(best) if best.exists() else None,
            data_position=info["data_position"],
            train_config=info["train_config"],
        )


class Trainer:
    """Fine-tunes the trainable parameters of ``model`` on tokenised chat examples.

    ``train_examples`` and ``val_examples`` are ``TrainingExample``s (``input_ids``,
    ``labels``: chats or pretraining blocks). Checkpoints go to ``out_dir/checkpoint/``
    every ``config.save_every`` steps; metrics to ``log_dir/<run_name>.jsonl`` when
    ``log_dir`` is given. The model is moved to ``device`` (default: the best this machine
    has). ``progress=False`` hides the tqdm bar.

    ``objective`` is what each step minimises (default ``NextTokenNLL`` with the config's
    bf16 and compile settings). ``fit`` seeds torch with ``config.seed`` (dropout);
    initialising the model and the LoRA matrices reproducibly is the caller's job, as is
    saving the final model.
    """

    def __init__(
        self,
        model: nn.Module,
        train_examples: Sequence[TrainingExample],
        val_examples: Sequence[TrainingExample],
        config: TrainConfig,
        pad_id: int,
        out_dir: str | Path | None = None,
        log_dir: str | Path | None = None,
        run_name: str = "train",
        device: torch.device | str | None = None,
        progress: bool = True,
        objective: Objective | None = None,
    ) -> None:
        self.out_dir = Path(out_dir) if out_dir is not None else None
        _check_settings(config, bool(val_examples), self.out_dir)
        if not train_examples:
            raise ValueError("Trainer: no training examples")
        self.objective = objective or NextTokenNLL(config.bf16, config.compile)
        self.objective.check(train_examples)
        if not trainable_parameters(model):
            raise ValueError("Trainer: the model has no parameter with requires_grad=True")
        self.config = config
        self.train_examples = train_examples
        self.val_examples = val_examples
        self.pad_id = pad_id
        self.log_path = Path(log_dir) / f"{run_name}.jsonl" if log_dir is not None else None
        self.run_name = run_name
        self.progress = progress
        self.model = model.to(torch.device(device) if device is not None else default_device())
        if config.gradient_checkpointing:
            if not hasattr(model, "gradient_checkpointing"):
                raise ValueError(f"Trainer: {type(model).__name__} has no gradient checkpointing")
            model.gradient_checkpointing = True
        # fused=True: one kernel updates all parameters instead of a chain of for-each
        # operations; the same AdamW math with fewer passes over memory.
        self.optimizer = torch.optim.AdamW(
            parameter_groups(model, config.weight_decay), lr=config.lr, betas=config.betas,
            fused=True,
        )
        self.examples_per_step = config.batch_size * config.grad_accum
        self.steps_per_epoch = math.ceil(len(train_examples) / self.examples_per_step)
        self.total_steps = config.max_steps or config.epochs * self.steps_per_epoch
        self.state = TrainerState()
        self.best_weights: dict[str, torch.Tensor] | None = None  # CPU copy, best val loss

    # ----- the loop -------------------------------------------------------------------

    def fit(self, resume: bool = False) -> TrainResult:
        """Train to the end (or until early stopping) and leave the best weights in the model.

        With ``resume=True`` training continues from ``out_dir/checkpoint`` exactly where it
        was saved. Without it, an existing checkpoint is an error rather than silently
        overwritten. On return the model holds the weights of the best validation loss, or
        the final ones when there is no validation set; ``trainable_state(model)`` gives
        them.
        """
        if resume:
            self.load_checkpoint()
        else:
            if self.config.save_every and recover_directory(self.checkpoint_dir) is not None:
                raise FileExistsError(
                    f"{self.checkpoint_dir}: a checkpoint exists; resume it "
                    "(resume=True, --resume) or choose another output folder"
                )
            torch.manual_seed(self.config.seed)
        self.model.train()
        log = self._open_log()
        bar = tqdm(
            total=self.total_steps, initial=self.state.step, desc=self.run_name,
            disable=not self.progress,
        )
        try:
            while not self._finished():
                record = self._train_step()
                if self.val_examples and (
                    record.step % self.config.eval_every == 0 or record.step == self.total_steps
                ):
                    self._evaluate(record)
                self.state.history.append(record)
                if log is not None:
                    log.write(json.dumps(asdict(record)) + "\n")
                    log.flush()
                bar.update(1)
                bar.set_postfix(
                    loss=f"{record.loss:.3f}", lr=f"{record.lr:.2e}",
                    tok_s=f"{record.tokens_per_s:.0f}",
                )
                if self.config.save_every and record.step % self.config.save_every == 0:
                    self.save_checkpoint()
        finally:
            bar.close()
            if log is not None:
                log.close()
        return self._finish()

    def _finished(self) -> bool:
        patience = self.config.patience
        out_of_patience = patience is not None and self.state.evals_without_improvement >= patience
        return self.state.step >= self.total_steps or out_of_patience

    def step_indices(self, step: int) -> list[int]:
        """Example indices of the 0-based optimizer step ``step``: a slice of its epoch's
        seeded order. (The data-parallel seam: each process takes its share of these.)"""
        epoch, step_in_epoch = divmod(step, self.steps_per_epoch)
        start = step_in_epoch * self.examples_per_step
        order = epoch_order(len(self.train_examples), self.config.seed, epoch)
        return order[start : start + self.examples_per_step]

    def _train_step(self) -> StepRecord:
        started = time.perf_counter()
        step = self.state.step
        batches = [
            self.objective.collate([self.train_examples[i] for i in chunk], self.pad_id)
            for chunk in micro_batches(self.step_indices(step), self.config.batch_size)
        ]
        lr = lr_at(step, self.config, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        try:
            loss, grad_norm = train_step(self.model, batches, self.optimizer, self.objective,
                                         self.config.max_grad_norm)
        except TrainingDiverged as err:
            checkpoint = self.checkpoint_dir
            kept = checkpoint if checkpoint and checkpoint.exists() else "none saved"
            raise TrainingDiverged(
                f"step {step + 1}: {err}: training stopped and this step was not applied "
                f"(the model keeps the weights after step {step}; last checkpoint: {kept}). "
                "Try a lower lr or max_grad_norm."
            ) from None
        self.state.step += 1
        return StepRecord(
            step=self.state.step,
            epoch=self.state.step / self.steps_per_epoch,
            loss=loss.mean,
            lr=lr,
            grad_norm=grad_norm,
            tokens_per_s=loss.input_tokens / (time.perf_counter() - started),
            metrics=self.objective.step_metrics(),
        )

    def _evaluate(self, record: StepRecord) -> None:
        """Validate, and remember the weights when they are the best so far."""
        metrics = self.objective.validate(self.model, self.val_examples, self.config.batch_size)
        record.val_loss = metrics.pop("loss")  # it decides early stopping
        record.metrics.update({f"eval_{name}": value for name, value in metrics.items()})
        state = self.state
        if state.best_val_loss is None or record.val_loss < state.best_val_loss:
            state.best_val_loss, state.best_step = record.val_loss, record.step
            state.evals_without_improvement = 0
            self.best_weights = trainable_state(self.model)
        else:
            state.evals_without_improvement += 1

    def _finish(self) -> TrainResult:
        state = self.state
        restored = self.best_weights is not None and state.best_step != state.step
        if restored:
            load_trainable_state(self.model, self.best_weights, "best weights")
        stopped_early = state.step < self.total_steps
        if stopped_early:
            reason = (
                f"early stopping after step {state.step}: no improvement in "
                f"{self.config.patience} evaluations"
            )
        else:
            reason = f"finished all {self.total_steps} steps"
        if state.best_step is not None:
            reason += f"; best val loss {state.best_val_loss:.4f} at step {state.best_step}"
        return TrainResult(
            steps=state.step,
            best_val_loss=state.best_val_loss,
            best_step=state.best_step,
            restored_best=restored,
            stopped_early=stopped_early,
            reason=reason,
            history=list(state.history),
        )

    def _open_log(self) -> TextIO | None:
        """Open the JSONL log, rewritten from the history so far.

        Rewriting (rather than appending) keeps the log equal to the history after a resume:
        steps a killed run logged after its last checkpoint are dropped, and redone.
        """
        if self.log_path is None:
            return None
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "w", encoding="utf-8")  # fit closes it
        for record in self.state.history:
            log.write(json.dumps(asdict(record)) + "\n")
        return log

    # ----- checkpoints ----------------------------------------------------------------

    @property
    def checkpoint_dir(self) -> Path | None:
        """Where resume state is saved: ``out_dir/checkpoint/`` (None without an out_dir)."""
        return self.out_dir / CHECKPOINT_DIR if self.out_dir is not None else None

    def save_checkpoint(self) -> Path:
        """Write the run's ``ResumeState`` into ``out_dir/checkpoint/``, atomically."""
        epoch, step_in_epoch = divmod(self.state.step, self.steps_per_epoch)
        position = {
            "epoch": epoch,
            "next_example": step_in_epoch * self.examples_per_step,
            **self._data_identity(),
        }
        return ResumeState(
            trainable=trainable_state(self.model), optimizer=self.optimizer.state_dict(),
            rng=_rng_state(), progress=self.state, best_weights=self.best_weights,
            data_position=position, train_config=config_to_dict(self.config),
        ).save(self.checkpoint_dir)

    def load_checkpoint(self) -> None:
        """Restore weights, optimizer, RNG, data position and history from ``out_dir``.

        The frozen weights are not in the checkpoint: the model must be built the same way
        (same base, same LoRA setup) as in the run that saved it.
        """
        if self.checkpoint_dir is None:
            raise FileNotFoundError(f"{CHECKPOINT_DIR}: no checkpoint to resume from")
        saved = ResumeState.load(self.checkpoint_dir)
        self._check_same_data(saved.data_position, self.checkpoint_dir)
        load_trainable_state(self.model, saved.trainable,
                             str(self.checkpoint_dir / "trainable.safetensors"))
        self.optimizer.load_state_dict(saved.optimizer)
        _set_rng_state(saved.rng)
        self.best_weights = saved.best_weights
        self.state = saved.progress

    def _data_identity(self) -> dict[str, int]:
        """What fixes the step -> examples mapping: a resume must see the same."""
        return {
            "num_examples": len(self.train_examples),
            "examples_per_step": self.examples_per_step,
            "seed": self.config.seed,
        }

    def _check_same_data(self, saved: dict[str, Any], path: Path) -> None:
        """Refuse to resume when the step -> examples mapping would differ from the saved run."""
        changed = [
            f"{key} {saved[key]} -> {value}"
            for key, value in self._data_identity().items() if saved[key] != value
        ]
        if changed:
            raise ValueError(
                f"{path}: cannot resume exactly, the data order differs from the saved run "
                f"(at epoch {saved['epoch']}, example {saved['next_example']}): "
                + ", ".join(changed)
            )


def _rng_state() -> dict[str, Any]:
    """The random generators dropout draws from: the CPU one and every CUDA device's."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
