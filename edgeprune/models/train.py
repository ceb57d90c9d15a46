"""A plain, reproducible training loop and the accuracy metric every stage shares.

Reproducible means: same seed, same data, same thread count -> same weights (the thread
count is chosen from the machine's idle cores and recorded in the result). Shuffling
and augmentation draw from a numpy generator seeded from ``seed``; torch's RNG is seeded
inside a forked RNG state so training never disturbs the caller's random streams.
Used to train the zoo once (cached) and, later, to fine-tune pruned models.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from edgeprune.host import busy_cores, usable_cores
from edgeprune.models.base import DataSplit, ModelData, Task

Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class TrainConfig:
    """How to train. ``shift`` > 0 randomly shifts image inputs ([B, C, H, W]) by up to
    that many pixels per axis (zero-cost augmentation that helps the small digits set);
    ``max_samples`` trains on a prefix of the training split (for smoke tests)."""

    epochs: int = 6
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    shift: int = 0
    max_samples: int | None = None
    threads: int | None = None  # None: suggested_threads() at the start of training


@dataclass(frozen=True)
class TrainResult:
    val_accuracy: float  # percent, 0-100
    seconds: float
    epochs: int
    threads: int


def suggested_threads() -> int:
    """Threads for training: the available cores minus those other processes keep busy.

    On a shared machine an oversubscribed OpenMP pool is dramatically slow (measured on
    this 2-core host under a load of ~7: one thread trained digits-cnn 2.5x and the
    recommender 4-7x faster than two), so we only use cores that look idle, and at
    least one.
    """
    cores = usable_cores()
    return max(1, min(cores, round(cores - busy_cores(0.3))))


#: the thread count an enclosing torch_threads chose (None outside any): dynamic scope,
#: so it is a context variable (per thread / task), not a module global
_OUTER_THREADS: contextvars.ContextVar[int | None] = contextvars.ContextVar("edgeprune_torch_threads", default=None)


@contextlib.contextmanager
def torch_threads(n: int | None = None) -> Iterator[int]:
    """Run torch ops on ``n`` intra-op threads (default: :func:`suggested_threads`) and
    put the previous setting back afterwards, so a library call does not change the
    caller's."""
    import torch

    old = torch.get_num_threads()
    # nested inside another torch_threads (a search's short recoveries inside prune_model):
    # keep the outer choice instead of sampling the machine's load again for every step
    n = n or (old if _OUTER_THREADS.get() is not None else suggested_threads())
    torch.set_num_threads(n)
    token = _OUTER_THREADS.set(n)
    try:
        yield n
    finally:
        _OUTER_THREADS.reset(token)
        torch.set_num_threads(old)


def _loss(logits, labels, task: Task):
    import torch.nn.functional as F

    if task == "binary":
        return F.binary_cross_entropy_with_logits(logits.reshape(-1), labels.float())
    return F.cross_entropy(logits, labels)


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def _shift_images(x, max_shift: int, rng: np.random.Generator):
    """Shift each image by a random (dy, dx) in [-max_shift, max_shift], filling with the
    background value (the batch minimum: the data is standardised, so 0 is not blank)."""
    import torch
    import torch.nn.functional as F

    s = max_shift
    h, w = x.shape[-2:]
    padded = F.pad(x, (s, s, s, s), value=float(x.min()))
    offs = rng.integers(0, 2 * s + 1, size=(x.shape[0], 2))
    return torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offs)])


def train(
    module,
    data: ModelData,
    config: TrainConfig = TrainConfig(),
    *,
    log: Log = _stderr,
    progress: bool = True,
    description: str = "training",
) -> TrainResult:
    """Train ``module`` in place on ``data.train`` and return its validation accuracy.

    Adam with a one-cycle schedule (short warm-up, cosine decay: reaches high accuracy
    in few epochs, which keeps first-use training of the zoo short); cross-entropy, or
    BCE-with-logits for binary tasks. Leaves the module in eval mode.
    """
    import torch

    t0 = time.perf_counter()
    split = data.train
    n = len(split) if config.max_samples is None else min(len(split), config.max_samples)
    inputs = [torch.from_numpy(np.ascontiguousarray(x[:n])) for x in split.inputs]
    labels = torch.from_numpy(np.ascontiguousarray(split.labels[:n]).astype(np.int64))
    steps_per_epoch = max(1, -(-n // config.batch_size))
    total = steps_per_epoch * config.epochs
    rng = np.random.default_rng(config.seed)

    with torch.random.fork_rng(devices=[]), torch_threads(config.threads) as threads, _progress(progress, description, total) as bar:
        torch.manual_seed(config.seed)
        opt = torch.optim.Adam(module.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=total, pct_start=0.15)
        module.train()
        for epoch in range(config.epochs):
            order = torch.from_numpy(rng.permutation(n))
            running = 0.0
            for step in range(steps_per_epoch):
                idx = order[step * config.batch_size : (step + 1) * config.batch_size]
                xs = [x[idx] for x in inputs]
                if config.shift > 0:
                    xs = [_shift_images(x, config.shift, rng) if x.ndim == 4 and x.is_floating_point() else x for x in xs]
                loss = _loss(_first(module(*xs)), labels[idx], data.task)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                running += float(loss.detach())
                bar(epoch, running / (step + 1))
        module.eval()
        acc = evaluate(module, data.val, data.task, batch_size=256)
    seconds = time.perf_counter() - t0
    log(f"{description}: {config.epochs} epochs on {n} samples in {seconds:.1f} s, val accuracy {acc:.2f}%")
    return TrainResult(val_accuracy=acc, seconds=seconds, epochs=config.epochs, threads=threads)


@contextlib.contextmanager
def _progress(enabled: bool, description: str, total: int):
    """A rich progress bar on stderr; yields ``update(epoch, mean_loss)``."""
    if not enabled:
        yield lambda epoch, loss: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as prog:
        task = prog.add_task(description, total=total, status="")

        def update(epoch: int, loss: float) -> None:
            prog.update(task, advance=1, status=f"epoch {epoch + 1} loss {loss:.3f}")

        yield update


def predict(module, split: DataSplit, batch_size: int = 256) -> np.ndarray:
    """Model outputs over ``split`` in chunks of exactly ``batch_size`` samples.

    The last chunk is padded by repeating its final sample (and the padding dropped from
    the result), so modules with a fixed batch (traced TorchScript, ExportedPrograms)
    score every sample too.
    """
    import torch

    n = len(split)
    outs = []
    was_training = getattr(module, "training", False)
    with contextlib.suppress(Exception):  # some exported modules refuse .eval()
        module.eval()
    try:
        with torch.no_grad():
            for start in range(0, n, batch_size):
                chunk = [x[start : start + batch_size] for x in split.inputs]
                real = chunk[0].shape[0]
                if real < batch_size:
                    chunk = [np.concatenate([c, np.repeat(c[-1:], batch_size - real, axis=0)]) for c in chunk]
                out = _first(module(*[torch.from_numpy(np.ascontiguousarray(c)) for c in chunk]))
                outs.append(out[:real].float().cpu().numpy())
    finally:
        if was_training:
            module.train()
    return np.concatenate(outs) if outs else np.zeros((0,), np.float32)


def accuracy(outputs: np.ndarray, labels: np.ndarray, task: Task) -> float:
    """Top-1 accuracy (classification) or accuracy of ``logit > 0`` (binary), in percent."""
    if len(labels) == 0:
        return float("nan")
    if task == "binary":
        pred = outputs.reshape(len(labels), -1)[:, 0] > 0
    else:
        pred = outputs.reshape(len(labels), -1).argmax(axis=1)
    return float(100.0 * np.mean(pred == labels))


def evaluate(module, split: DataSplit, task: Task, batch_size: int = 256) -> float:
    """Accuracy of ``module`` on ``split`` in percent (0-100), run at ``batch_size``
    (pass the deployment batch to score the model exactly as it will be served)."""
    return accuracy(predict(module, split, batch_size), split.labels, task)
