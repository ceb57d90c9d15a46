"""Recovering accuracy after pruning: fine-tuning (optionally distilled from the
unpruned model), short recoveries used inside searches, and BatchNorm recalibration.

Reproducible: the same seed, data and thread count give the same weights. Batches are
drawn from a numpy generator seeded from ``seed`` and torch's RNG is forked, so a
fine-tune never disturbs the caller's random streams. Progress bars go to stderr.
Accuracy is measured with :func:`edgeprune.models.train.evaluate`, like everywhere else.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgeprune.models.base import DataSplit, ModelData, Task
from edgeprune.models.train import evaluate, torch_threads
from edgeprune.prune.recipe import DEFAULT_FINETUNE_EPOCHS, DEFAULT_LR

Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class FinetuneConfig:
    """How to fine-tune a pruned model.

    ``distill``: train on ``alpha * KD + (1 - alpha) * CE`` with the unpruned model as
    teacher (soft targets at ``temperature``; for binary tasks the teacher's probability).
    ``shift``: random image shifts of up to that many pixels (4-D float inputs only).
    """

    epochs: float = DEFAULT_FINETUNE_EPOCHS
    lr: float = DEFAULT_LR
    batch_size: int = 64
    weight_decay: float = 0.0  # Adam L2 on rarely-hit embedding rows would shrink them every step
    distill: bool = False
    temperature: float = 4.0
    alpha: float = 0.7
    seed: int = 0
    shift: int = 0
    max_steps: int | None = None
    #: re-estimate BatchNorm statistics after the steps (:func:`recalibrate_bn`), before
    #: the accuracy is measured: False keeps the running averages training left
    recalibrate_bn: bool = True


def task_loss(logits: torch.Tensor, labels: torch.Tensor, task: Task) -> torch.Tensor:
    if task == "binary":
        return F.binary_cross_entropy_with_logits(logits.reshape(-1), labels.float())
    return F.cross_entropy(logits, labels)


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, task: Task, temperature: float) -> torch.Tensor:
    if task == "binary":
        return F.binary_cross_entropy_with_logits(student.reshape(-1) / temperature,
                                                  torch.sigmoid(teacher.reshape(-1) / temperature)) * temperature**2
    t = temperature
    return F.kl_div(F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1), reduction="batchmean",
                    log_target=True) * t * t


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def _shift_images(x: torch.Tensor, s: int, rng: np.random.Generator) -> torch.Tensor:
    h, w = x.shape[-2:]
    padded = F.pad(x, (s, s, s, s), value=float(x.min()))
    offs = rng.integers(0, 2 * s + 1, size=(x.shape[0], 2))
    return torch.stack([padded[i, :, dy: dy + h, dx: dx + w] for i, (dy, dx) in enumerate(offs)])


class _Batches:
    """Endless shuffled mini-batches of a split, reproducible from ``seed``."""

    def __init__(self, split: DataSplit, batch_size: int, seed: int, shift: int = 0) -> None:
        self.inputs = [torch.from_numpy(np.ascontiguousarray(x)) for x in split.inputs]
        self.labels = torch.from_numpy(np.ascontiguousarray(split.labels).astype(np.int64))
        self.n = len(split)
        self.bs = max(1, min(batch_size, self.n))
        self.rng = np.random.default_rng(seed)
        self.shift = shift
        self._order = np.zeros(0, dtype=np.int64)
        self._pos = 0

    @property
    def steps_per_epoch(self) -> int:
        return max(1, self.n // self.bs)

    def __iter__(self) -> Iterator[tuple[list[torch.Tensor], torch.Tensor]]:
        return self

    def __next__(self) -> tuple[list[torch.Tensor], torch.Tensor]:
        if self._pos + self.bs > len(self._order):
            self._order = self.rng.permutation(self.n)
            self._pos = 0
        idx = torch.from_numpy(self._order[self._pos: self._pos + self.bs])
        self._pos += self.bs
        xs = [x[idx] for x in self.inputs]
        if self.shift > 0:
            xs = [_shift_images(x, self.shift, self.rng) if x.ndim == 4 and x.is_floating_point() else x for x in xs]
        return xs, self.labels[idx]


@contextlib.contextmanager
def progress_bar(enabled: bool, description: str, total: int):
    """A rich progress bar on stderr; yields ``update(status: str)`` (one step each)."""
    if not enabled or total <= 0:
        yield lambda status="": None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as prog:
        task = prog.add_task(description, total=total, status="")
        yield lambda status="": prog.update(task, advance=1, status=status)


def finetune(
    module: nn.Module,
    data: ModelData,
    config: FinetuneConfig = FinetuneConfig(),
    *,
    teacher: nn.Module | None = None,
    eval_batch: int = 256,
    log: Log = _stderr,
    progress: bool = True,
    description: str = "fine-tuning",
) -> float:
    """Fine-tune ``module`` in place (Adam, cosine decay), re-estimate its BatchNorm
    statistics (``config.recalibrate_bn``) and return its validation accuracy in percent.
    ``teacher`` is required when ``config.distill`` is set."""
    if config.distill and teacher is None:
        raise ValueError("distillation needs a teacher model")
    batches = _Batches(data.train, config.batch_size, config.seed, config.shift)
    total = int(math.ceil(config.epochs * batches.steps_per_epoch))
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    if total <= 0:
        return evaluate(module, data.val, data.task, batch_size=eval_batch)
    with torch.random.fork_rng(devices=[]), torch_threads(), progress_bar(progress, description, total) as bar:
        torch.manual_seed(config.seed)
        _train_steps(module, batches, data.task, total, config, teacher, bar)
        if config.recalibrate_bn:
            recalibrate_bn(module, data, batch_size=config.batch_size, seed=config.seed + 1)
        acc = evaluate(module, data.val, data.task, batch_size=eval_batch)
    if progress:
        log(f"{description}: {total} steps ({total / batches.steps_per_epoch:.1f} epochs)"
            f"{' with distillation' if config.distill else ''}, val accuracy {acc:.2f}%")
    return acc


def _train_steps(module, batches, task, total, config, teacher, bar) -> None:
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(i, total) / total)))
    if teacher is not None:
        teacher.eval()
    module.train()
    running = 0.0
    for step in range(total):
        xs, y = next(batches)
        out = _first(module(*xs))
        loss = task_loss(out, y, task)
        if config.distill and teacher is not None:
            with torch.no_grad():
                t_out = _first(teacher(*xs))
            loss = config.alpha * distill_loss(out, t_out, task, config.temperature) + (1 - config.alpha) * loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running = 0.9 * running + 0.1 * float(loss.detach()) if step else float(loss.detach())
        bar(f"loss {running:.3f}")
    module.eval()


def has_batchnorm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


#: training samples BatchNorm statistics are re-estimated on: a cumulative average over
#: this many samples (at the spatial positions of every image) pins a channel's mean and
#: variance to well under 1 % of its spread; 8 batches of 64 left the small classifier
#: BatchNorm1d of a 1,437-sample set noticeably noisier
RECALIBRATION_SAMPLES = 1024


def recalibrate_bn(module: nn.Module, data: ModelData, batches: int | None = None, batch_size: int = 64,
                   seed: int = 0) -> None:
    """Re-estimate BatchNorm running statistics on training batches (no weight update).

    Why, and why more than once: after channels are cut, the next layers see different
    statistics; after fine-tuning, the weights moved while a model's running statistics
    followed them only by its momentum per step — torchvision's MobileNetV3 / EfficientNet
    use 0.01 (others 3e-4), so a 20-step fine-tune moves them 18 % (0.6 %) of the way and
    the eval-mode model collapses (issue 17: 39 % after the cut, 75 % after fine-tuning,
    for a 97.5 % model). The estimate is a cumulative average (``momentum=None``) over
    :data:`RECALIBRATION_SAMPLES` samples (``batches`` overrides), with only the norm
    layers in train mode: dropout and stochastic depth stay off, as at inference, so the
    statistics are those eval mode will see. Each layer's own momentum is restored, also
    when the forward pass fails."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    n_train = len(data.train)
    if batches is None:
        batches = max(1, math.ceil(min(RECALIBRATION_SAMPLES, n_train) / max(1, min(batch_size, n_train))))
    saved = [m.momentum for m in bns]
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
        it = _Batches(data.train, batch_size, seed)
        module.eval()
        for m in bns:
            m.train()
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            for _ in range(batches):
                xs, _y = next(it)
                module(*xs)
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom
        module.eval()


def recover(module: nn.Module, data: ModelData, steps: int, *, lr: float = DEFAULT_LR, batch_size: int = 64,
            seed: int = 0, teacher: nn.Module | None = None) -> nn.Module:
    """A brief recovery used inside searches: BN recalibration, then ``steps`` SGD steps
    (distilled when a teacher is given), then BN recalibration again (the candidates are
    ranked by eval-mode accuracy, which stale statistics would decide instead of the
    widths). In place; returns ``module``."""
    if has_batchnorm(module):
        recalibrate_bn(module, data, seed=seed)
    if steps > 0:
        cfg = FinetuneConfig(lr=lr, batch_size=batch_size, seed=seed, distill=teacher is not None, max_steps=steps,
                             epochs=1e9)
        with torch.random.fork_rng(devices=[]), torch_threads():
            torch.manual_seed(seed)
            _train_steps(module, _Batches(data.train, batch_size, seed), data.task, steps, cfg, teacher,
                         lambda status="": None)
        if has_batchnorm(module):  # the steps moved the weights; a small momentum did not follow
            recalibrate_bn(module, data, seed=seed + 1)
    return module


def subset(split: DataSplit, n: int | None, seed: int = 0) -> DataSplit:
    """A fixed random subset of ``n`` samples (all if ``n`` is None or larger)."""
    if n is None or n >= len(split):
        return split
    idx = np.sort(np.random.default_rng(seed).choice(len(split), size=n, replace=False))
    return DataSplit([x[idx] for x in split.inputs], split.labels[idx])
