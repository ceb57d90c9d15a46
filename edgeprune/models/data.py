"""The data sets that come with edgeprune, and reading a user's own ``.npz``.

Nothing here downloads: the digits are scikit-learn's bundled copy (1,797 real 8x8
scans), the recommender data is generated. The digits are upsampled to 32x32 so the demo
models do real work per inference (DESIGN.md, "Demo models must be compute-bound").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeprune.errors import ModelError
from edgeprune.models.base import DataSplit, ModelData, Task

VAL_FRACTION = 0.2
NPZ_KEYS = ("x_train", "y_train", "x_val", "y_val")


def _digits_upsampled(size: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Stratified 80/20 split of the digits, bilinearly upsampled to ``size`` x ``size``
    and standardised with the training split's mean and std (float32, [N, 1, size, size])."""
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if size < 8:
        raise ModelError(f"digits image size must be at least 8 (the native resolution), got {size}")
    digits = load_digits()
    x = digits.images.astype(np.float32) / 16.0  # [N, 8, 8] in [0, 1]
    y = digits.target.astype(np.int64)
    if size != 8:
        t = torch.from_numpy(x)[:, None]
        x = torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", align_corners=False).numpy()
    else:
        x = x[:, None]
    x_tr, x_va, y_tr, y_va = train_test_split(x, y, test_size=VAL_FRACTION, stratify=y, random_state=seed)
    mean, std = float(x_tr.mean()), float(x_tr.std())
    norm = lambda a: np.ascontiguousarray((a - mean) / std, dtype=np.float32)  # noqa: E731
    return norm(x_tr), y_tr, norm(x_va), y_va


def digits_images(size: int = 32, seed: int = 0) -> ModelData:
    """scikit-learn's digits as images [N, 1, size, size]: real data, 10 classes."""
    x_tr, y_tr, x_va, y_va = _digits_upsampled(size, seed)
    return ModelData(
        train=DataSplit([x_tr], y_tr),
        val=DataSplit([x_va], y_va),
        task="classification",
        synthetic=False,
        description=f"scikit-learn digits (1,797 real 8x8 scans) upsampled to {size}x{size}, "
        f"stratified {1 - VAL_FRACTION:.0%}/{VAL_FRACTION:.0%} split (seed {seed})",
    )


def digits_sequences(size: int = 32, seed: int = 0) -> ModelData:
    """The same images read row by row: [N, size steps, size features] (batch_first),
    so recurrent models see the same real data as the CNNs."""
    x_tr, y_tr, x_va, y_va = _digits_upsampled(size, seed)
    return ModelData(
        train=DataSplit([np.ascontiguousarray(x_tr[:, 0])], y_tr),
        val=DataSplit([np.ascontiguousarray(x_va[:, 0])], y_va),
        task="classification",
        synthetic=False,
        description=f"scikit-learn digits upsampled to {size}x{size}, read as {size} rows of {size} pixels "
        f"(stratified {1 - VAL_FRACTION:.0%}/{VAL_FRACTION:.0%} split, seed {seed})",
    )


def recsys_synthetic(
    n_users: int = 2000,
    n_items: int = 1000,
    rank: int = 8,
    seed: int = 0,
    n_samples: int = 128_000,
    noise: float = 0.3,
    bias_std: float = 0.7,
    val_batch: int = 256,
) -> ModelData:
    """SYNTHETIC recommender interactions: a real recommender data set cannot be shipped
    offline, so ratings are generated from a low-rank model.

    score(u, i) = <U_u, V_i> + b_u + b_i + noise, with U, V of rank ``rank``; the label
    "liked" is ``score > median`` (balanced classes). Each sample is a (user id, item id)
    pair of int64 ids, drawn without repetition. The validation split has a multiple of
    ``val_batch`` samples so a model served in batches of ``val_batch`` requests scores
    every validation sample (the compiled artifact has a static batch).
    """
    if n_users < 1 or n_items < 1 or rank < 1:
        raise ModelError("recsys_synthetic needs n_users, n_items and rank >= 1")
    n_samples = min(n_samples, n_users * n_items)
    rng = np.random.default_rng(seed)
    users_f = rng.normal(size=(n_users, rank)) / np.sqrt(rank)
    items_f = rng.normal(size=(n_items, rank))
    user_bias = rng.normal(scale=bias_std, size=n_users)
    item_bias = rng.normal(scale=bias_std, size=n_items)
    pairs = rng.choice(n_users * n_items, size=n_samples, replace=False)
    users, items = pairs // n_items, pairs % n_items
    score = np.einsum("nr,nr->n", users_f[users], items_f[items]) + user_bias[users] + item_bias[items]
    score += rng.normal(scale=noise, size=n_samples)
    labels = (score > np.median(score)).astype(np.int64)
    n_val = max(val_batch, int(round(n_samples * VAL_FRACTION / val_batch)) * val_batch)
    if n_val >= n_samples:
        raise ModelError(f"recsys_synthetic: {n_samples} samples are too few for a validation split of {n_val}")
    u, i = users.astype(np.int64), items.astype(np.int64)
    tr, va = slice(n_val, None), slice(0, n_val)  # pairs are already in random order
    return ModelData(
        train=DataSplit([u[tr], i[tr]], labels[tr]),
        val=DataSplit([u[va], i[va]], labels[va]),
        task="binary",
        synthetic=True,
        description=f"SYNTHETIC data (a real recommender data set cannot be shipped offline): rank-{rank} "
        f"rating model over {n_users} users x {n_items} items plus noise, label = rating above median, "
        f"{n_samples} (user, item) pairs, seed {seed}",
    )


def load_npz_data(path: Path, task: Task | None = None) -> ModelData:
    """A user's own data for accuracy checks and fine-tuning.

    The ``.npz`` holds ``x_train, y_train, x_val, y_val`` (one model input; dim 0 is the
    sample). Labels are integer class ids; ``task`` is "classification" unless given, or
    unless the file holds a string array ``task`` ("classification" or "binary": labels
    0/1, one logit per sample). Float inputs are read as float32, integer inputs as int64.
    """
    path = Path(path)
    hint = f"write it with numpy.savez('{path.name}', x_train=..., y_train=..., x_val=..., y_val=...)"
    if not path.is_file():
        raise ModelError(f"data file {path} does not exist", hint)
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in NPZ_KEYS if k not in npz.files]
            if missing:
                raise ModelError(
                    f"data file {path} lacks {', '.join(missing)} (it has: {', '.join(npz.files) or 'nothing'})", hint
                )
            arrays = {k: npz[k] for k in NPZ_KEYS}
            file_task = str(npz["task"]) if "task" in npz.files else None
    except ModelError:
        raise
    except Exception as exc:  # BadZipFile, ValueError (object arrays / not npz), OSError
        raise ModelError(f"cannot read data file {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", hint) from exc

    task = task or file_task or "classification"  # type: ignore[assignment]
    if task not in ("classification", "binary"):
        raise ModelError(f"data file {path}: task must be 'classification' or 'binary', not '{task}'")

    splits = {}
    for name in ("train", "val"):
        x, y = arrays[f"x_{name}"], arrays[f"y_{name}"]
        if x.ndim < 1 or y.ndim != 1:
            raise ModelError(f"data file {path}: y_{name} must be 1-D labels, got shape {y.shape}")
        if x.shape[0] != y.shape[0]:
            raise ModelError(f"data file {path}: x_{name} has {x.shape[0]} samples but y_{name} has {y.shape[0]}")
        if x.shape[0] == 0:
            raise ModelError(f"data file {path}: the {name} split is empty")
        splits[name] = (_as_input(x, path, f"x_{name}"), _as_labels(y, path, f"y_{name}", task))
    if splits["train"][0].shape[1:] != splits["val"][0].shape[1:]:
        raise ModelError(
            f"data file {path}: x_train samples have shape {splits['train'][0].shape[1:]} "
            f"but x_val samples {splits['val'][0].shape[1:]}"
        )
    return ModelData(
        train=DataSplit([splits["train"][0]], splits["train"][1]),
        val=DataSplit([splits["val"][0]], splits["val"][1]),
        task=task,  # type: ignore[arg-type]
        synthetic=False,
        description=f"user data from {path} ({len(splits['train'][1])} train / {len(splits['val'][1])} val samples)",
    )


def _as_input(x: np.ndarray, path: Path, key: str) -> np.ndarray:
    if x.dtype.kind == "f":
        return np.ascontiguousarray(x, dtype=np.float32)
    if x.dtype.kind in "iub":
        return np.ascontiguousarray(x, dtype=np.int64)
    raise ModelError(f"data file {path}: {key} has dtype {x.dtype}; use float or integer arrays")


def _as_labels(y: np.ndarray, path: Path, key: str, task: str) -> np.ndarray:
    if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        y = y.astype(np.int64)
    if y.dtype.kind not in "iub":
        raise ModelError(f"data file {path}: {key} must hold integer class ids, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.min() < 0:
        raise ModelError(f"data file {path}: {key} has negative class ids")
    if task == "binary" and y.max() > 1:
        raise ModelError(f"data file {path}: task 'binary' needs 0/1 labels, {key} has values up to {y.max()}")
    return y
