"""The built-in model zoo: ``zoo:NAME`` -> a ready :class:`LoadedModel`.

Trainable entries are trained once, on first use, and their ``state_dict`` cached as
``<name>-<key>.pt`` under ``edgeprune.paths.cache_dir("models")`` (``$EDGEPRUNE_CACHE/models``,
default ``~/.cache/edgeprune/models``), where ``key`` hashes everything that decides the
weights: architecture config, data config (including its seed), training config and
``ZOO_CODE_VERSION``. Bump ``ZOO_CODE_VERSION`` whenever a change to archs, data or
the training loop would change the trained weights; stale files are then simply never
read again. A cached file that cannot be read or no longer fits its architecture is
retrained, not trusted.

Concurrency: the cache is written to a temporary file and renamed into place, so a
reader never sees half a file, and training holds an exclusive lock file so several
processes starting at once (parallel tests, a nightly matrix) train each model once.

``resnet18`` and ``mobilenetv2`` have random weights: no pretrained weights can be
downloaded on these machines. They serve latency work (profiling, compiling,
benchmarking), never accuracy claims.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeprune import __version__
from edgeprune.errors import ModelError
from edgeprune.paths import cache_dir
from edgeprune.models.base import LoadedModel, ModelData
from edgeprune.registry import Registry

if TYPE_CHECKING:
    import torch

    from edgeprune.models.train import TrainConfig

Log = Callable[[str], None]

ZOO_CODE_VERSION = 1
INIT_SEED = 0
DATA_SEED = 0
RECSYS_BATCH = 256  # requests per inference: the recommender is served in batches
RANDOM_WEIGHTS_NOTE = "random weights: latency work only (no pretrained weights can be downloaded here)"


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class ZooEntry:
    """How to build one zoo model. ``arch`` and ``data_kwargs`` are plain JSON-able
    configs: they are passed to the constructors *and* hashed into the cache key."""

    name: str
    description: str
    arch_cls: str  # class name in edgeprune.models.archs
    arch: dict[str, Any]
    input_names: tuple[str, ...] = ("input",)
    data_fn: str | None = None  # function name in edgeprune.models.data
    data_kwargs: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] | None = None  # TrainConfig fields; None = not trained
    batch: int = 1
    notes: tuple[str, ...] = ()

    def build_module(self) -> "torch.nn.Module":
        """A fresh module with seeded initial weights (the caller's RNG is untouched)."""
        import torch

        from edgeprune.models import archs

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(INIT_SEED)
            module = getattr(archs, self.arch_cls)(**self.arch)
            if self.train is None:
                _calibrate_batchnorm(module, self.random_inputs(batch=2))
        return module.eval()

    def load_data(self) -> ModelData | None:
        if self.data_fn is None:
            return None
        from edgeprune.models import data

        return getattr(data, self.data_fn)(**self.data_kwargs)

    def train_config(self) -> "TrainConfig":
        from edgeprune.models.train import TrainConfig

        return TrainConfig(**(self.train or {}))

    def random_inputs(self, batch: int | None = None) -> list[np.ndarray]:
        """Seeded random example input for models without data (image-shaped float32)."""
        from edgeprune.models import archs

        shape = getattr(archs, self.arch_cls).example_input_shape
        rng = np.random.default_rng(INIT_SEED)
        return [rng.standard_normal((batch or self.batch, *shape[1:]), dtype=np.float32)]

    def cache_key(self) -> str:
        blob = json.dumps(
            {
                "name": self.name,
                "arch": [self.arch_cls, self.arch],
                "data": [self.data_fn, {"seed": DATA_SEED, **self.data_kwargs}],
                "train": asdict(self.train_config()),
                "init_seed": INIT_SEED,
                "zoo_code_version": ZOO_CODE_VERSION,
                "edgeprune": __version__.split(".")[0],
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


ZOO: Registry[ZooEntry] = Registry("zoo model", ModelError)


def _add(entry: ZooEntry) -> None:
    ZOO.add(entry.name, entry)


_add(ZooEntry(
    name="digits-cnn",
    description="VGG-style CNN (conv-BN-ReLU x7, 32/64/128 ch, ~57 M MACs) on scikit-learn digits upsampled to 32x32",
    arch_cls="DigitsCNN", arch={"width": 32, "depth": [2, 3, 3]},
    data_fn="digits_images", data_kwargs={"size": 32, "seed": DATA_SEED},
    train={"epochs": 8, "batch_size": 64, "lr": 3e-3, "weight_decay": 1e-4, "shift": 2},
))
_add(ZooEntry(
    name="digits-resnet",
    description="small ResNet (3 BasicBlocks with residual adds, ~49 M MACs) on digits upsampled to 32x32",
    arch_cls="SmallResNet", arch={"width": 32, "blocks": [1, 1, 1]},
    data_fn="digits_images", data_kwargs={"size": 32, "seed": DATA_SEED},
    train={"epochs": 6, "batch_size": 64, "lr": 3e-3, "weight_decay": 1e-4, "shift": 2},
))
_add(ZooEntry(
    name="resnet18",
    description="ResNet-18, 3x224x224, 1.8 G MACs; random weights, for latency work",
    arch_cls="ResNet18", arch={"num_classes": 1000},
    notes=(RANDOM_WEIGHTS_NOTE, "example input is seeded random noise; BatchNorm statistics calibrated on it"),
))
_add(ZooEntry(
    name="mobilenetv2",
    description="MobileNetV2 (width 1.0), 3x224x224, 0.3 G MACs; random weights, for latency work",
    arch_cls="MobileNetV2", arch={"num_classes": 1000, "width_mult": 1.0},
    notes=(RANDOM_WEIGHTS_NOTE, "example input is seeded random noise; BatchNorm statistics calibrated on it"),
))
_add(ZooEntry(
    name="lstm-digits",
    description="LSTM (hidden 256) reading digits row by row (32 steps x 32 pixels) + linear head",
    arch_cls="LSTMDigits", arch={"hidden": 256, "input_size": 32},
    data_fn="digits_sequences", data_kwargs={"size": 32, "seed": DATA_SEED},
    train={"epochs": 20, "batch_size": 64, "lr": 3e-3, "weight_decay": 0.0},
))
_add(ZooEntry(
    name="gru-digits",
    description="GRU (hidden 256) reading digits row by row (32 steps x 32 pixels) + linear head",
    arch_cls="GRUDigits", arch={"hidden": 256, "input_size": 32},
    data_fn="digits_sequences", data_kwargs={"size": 32, "seed": DATA_SEED},
    train={"epochs": 20, "batch_size": 64, "lr": 3e-3, "weight_decay": 0.0},
))
_add(ZooEntry(
    name="mlp-recsys",
    description="recommender MLP (user+item embeddings -> 512-256-128 -> 1 logit), batches of 256 requests; SYNTHETIC data",
    arch_cls="RecsysMLP", arch={"n_users": 2000, "n_items": 1000, "emb_dim": 32, "hidden": [512, 256, 128]},
    input_names=("user_ids", "item_ids"),
    data_fn="recsys_synthetic", data_kwargs={"n_users": 2000, "n_items": 1000, "rank": 8, "seed": DATA_SEED,
                                             "n_samples": 200_000},
    train={"epochs": 5, "batch_size": 512, "lr": 5e-3, "weight_decay": 0.0},
    batch=RECSYS_BATCH,
    notes=("trained on SYNTHETIC data: a real recommender data set cannot be shipped offline",),
))
_add(ZooEntry(
    name="dlrm-recsys",
    description="DLRM-like click model (8 embedding bags of 100 ids x 32 + bottom MLP 13-128-64-32, pairwise "
    "dot interaction, top MLP 68-512-256-1), batches of 256 requests; SYNTHETIC data",
    arch_cls="DLRM", arch={"n_dense": 13, "vocab_sizes": [100] * 8, "emb_dim": 32, "bottom": [128, 64],
                           "top": [512, 256]},
    input_names=("dense", "sparse"),
    data_fn="dlrm_synthetic", data_kwargs={"n_dense": 13, "vocab_sizes": [100] * 8, "bag": 2, "rank": 8,
                                           "seed": DATA_SEED, "n_samples": 200_000},
    train={"epochs": 10, "batch_size": 256, "lr": 5e-3, "weight_decay": 0.0},
    batch=RECSYS_BATCH,
    notes=("trained on SYNTHETIC click data: no real click-log data set can be shipped offline",
           "pruning leaves the embeddings and the bottom MLP's last layer (bottom.4) whole: their width is the "
           "embedding dim that every dot product of the feature interaction is taken over"),
))


def list_zoo() -> list[tuple[str, str]]:
    """(name, one-line description) of every zoo model, sorted by name."""
    return [(name, ZOO.get(name).description) for name in ZOO.names()]


def cache_path(name: str) -> Path:
    """Where the trained weights of zoo model ``name`` live (under ``cache_dir("models")``)."""
    entry = ZOO.get(name)
    return cache_dir("models") / f"{entry.name}-{entry.cache_key()}.pt"


def load_zoo(name: str, *, log: Log = _stderr, trained: bool = True) -> LoadedModel:
    """Build zoo model ``name``. Trainable models get their cached trained weights
    (training them first if needed) unless ``trained=False`` (fresh seeded init, e.g.
    to load a user's own state_dict into the architecture)."""
    entry = ZOO.get(name)
    module = entry.build_module()
    data = entry.load_data()
    meta: dict[str, Any] = {"zoo": entry.name, "arch": {"class": entry.arch_cls, **entry.arch}}
    notes = list(entry.notes)
    if data is not None:
        notes.append(f"data: {data.description}")
        if trained and entry.train is not None:
            meta["cache_path"] = str(cache_path(name))
            meta["trained"] = _trained_weights(entry, module, data, log)
        example = [np.ascontiguousarray(x[: entry.batch]) for x in data.val.inputs]
    else:
        example = entry.random_inputs()
    return LoadedModel(
        name=entry.name,
        spec=f"zoo:{entry.name}",
        input_names=list(entry.input_names),
        example_inputs=example,
        output_names=["output"],
        module=module.eval(),
        data=data,
        notes=notes,
        meta=meta,
    )


def _trained_weights(entry: ZooEntry, module: "torch.nn.Module", data: ModelData, log: Log) -> dict[str, Any]:
    """Load the cached state_dict into ``module``, or train and cache it; returns the
    training record (val accuracy, seconds, epochs) stored with the weights."""
    path = cache_path(entry.name)
    meta = _try_load(path, module, log)
    if meta is not None:
        log(f"using cached weights {path}")
        return meta
    path.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(path.with_name(path.name + ".lock")):
        meta = _try_load(path, module, log)  # another process may have finished meanwhile
        if meta is not None:
            log(f"using cached weights {path}")
            return meta
        log(f"training {entry.name} (first use, cached at {path})")
        from edgeprune.models.train import train

        result = train(module, data, entry.train_config(), log=log, description=f"training {entry.name}")
        meta = {"val_accuracy": result.val_accuracy, "train_seconds": result.seconds, "epochs": result.epochs,
                "threads": result.threads, "key": entry.cache_key()}
        _atomic_save({"state_dict": module.state_dict(), "meta": meta}, path)
    module.eval()
    return meta


def _try_load(path: Path, module: "torch.nn.Module", log: Log) -> dict[str, Any] | None:
    import torch

    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        module.load_state_dict(blob["state_dict"], strict=True)
        return dict(blob.get("meta", {}))
    except Exception as exc:  # corrupt file, old layout: retrain rather than trust it
        log(f"cached weights {path} are unusable ({type(exc).__name__}); retraining")
        return None


def _atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same directory, then rename over ``path``."""
    import torch

    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; the cache is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock (POSIX flock); a no-op where flock is missing."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(lock_path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _calibrate_batchnorm(module: "torch.nn.Module", inputs: list[np.ndarray]) -> None:
    """Set BatchNorm running statistics from one forward pass on ``inputs``.

    A randomly initialised network in eval mode (running mean 0, var 1) can shrink its
    activations to ~1e-9 (MobileNetV2 does), which would make output-parity checks
    meaningless. One pass in train mode with cumulative averaging gives every BN the
    statistics of its actual input, so outputs are O(1).
    """
    import torch

    bns = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    module.train()
    with torch.no_grad():
        module(*[torch.from_numpy(x) for x in inputs])
    for bn, m in zip(bns, momenta):
        bn.momentum = m
    module.eval()
