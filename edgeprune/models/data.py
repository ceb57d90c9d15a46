"""The data sets that come with edgeprune, and reading a user's own ``.npz``.

Nothing here downloads: the digits are scikit-learn's bundled copy (1,797 real 8x8
scans), the recommender data is generated. The digits are upsampled to 32x32 so the demo
models do real work per inference (DESIGN.md, "Demo models must be compute-bound"), and to
64x64 RGB (three identical planes) for ImageNet-style architectures written for colour input.
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


def digits_images(size: int = 32, seed: int = 0, channels: int = 1) -> ModelData:
    """scikit-learn's digits as images [N, channels, size, size]: real data, 10 classes.

    ``channels=3`` repeats the grey scan in three identical planes, so networks written
    for RGB input (an ImageNet-style stem, e.g. at ``size=64``) train and prune on real
    data as they are, without a user editing their first layer; the planes carry no
    colour information and the description says so."""
    if channels < 1:
        raise ModelError(f"digits images need at least 1 channel, got {channels}")
    x_tr, y_tr, x_va, y_va = _digits_upsampled(size, seed)
    planes = ""
    if channels > 1:
        x_tr, x_va = (np.ascontiguousarray(np.repeat(a, channels, axis=1)) for a in (x_tr, x_va))
        planes = f", grey repeated in {channels} identical channels (no colour information)"
    return ModelData(
        train=DataSplit([x_tr], y_tr),
        val=DataSplit([x_va], y_va),
        task="classification",
        synthetic=False,
        description=f"scikit-learn digits (1,797 real 8x8 scans) upsampled to {size}x{size}{planes}, "
        f"stratified {1 - VAL_FRACTION:.0%}/{VAL_FRACTION:.0%} split (seed {seed})",
    )


def save_npz_data(data: ModelData, path: Path) -> Path:
    """Write a single-input data set as the ``.npz`` a user passes with ``--data`` (the
    format :func:`load_npz_data` reads back), so a benchmark hands edgeprune its data
    exactly as a user would. ``task`` is stored when it is not "classification"."""
    if len(data.train.inputs) != 1 or len(data.val.inputs) != 1:
        raise ModelError(f"a --data .npz holds one model input; this data set has {len(data.train.inputs)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = {"task": np.array(data.task)} if data.task != "classification" else {}
    with path.open("wb") as f:  # a file object: numpy would otherwise append ".npz" to other names
        np.savez(f, x_train=data.train.inputs[0], y_train=data.train.labels,
                 x_val=data.val.inputs[0], y_val=data.val.labels, **extra)
    return path


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


def _val_split(name: str, n_samples: int, val_batch: int) -> tuple[slice, slice]:
    """(train, validation) slices of samples already in random order: the validation
    split a multiple of ``val_batch`` (the deployment batch), about VAL_FRACTION."""
    n_val = max(val_batch, int(round(n_samples * VAL_FRACTION / val_batch)) * val_batch)
    if n_val >= n_samples:
        raise ModelError(f"{name}: {n_samples} samples are too few for a validation split of {n_val}")
    return slice(n_val, None), slice(0, n_val)


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
    tr, va = _val_split("recsys_synthetic", n_samples, val_batch)  # pairs are already in random order
    u, i = users.astype(np.int64), items.astype(np.int64)
    return ModelData(
        train=DataSplit([u[tr], i[tr]], labels[tr]),
        val=DataSplit([u[va], i[va]], labels[va]),
        task="binary",
        synthetic=True,
        description=f"SYNTHETIC data (a real recommender data set cannot be shipped offline): rank-{rank} "
        f"rating model over {n_users} users x {n_items} items plus noise, label = rating above median, "
        f"{n_samples} (user, item) pairs, seed {seed}",
    )



def dlrm_synthetic(
    n_dense: int = 13,
    vocab_sizes: tuple[int, ...] | list[int] = (1000,) * 8,
    bag: int = 2,
    rank: int = 8,
    seed: int = 0,
    n_samples: int = 100_000,
    noise: float = 0.3,
    val_batch: int = 256,
) -> ModelData:
    """SYNTHETIC click logs for a DLRM-like model: no real click data set (Criteo and
    the like) can be shipped offline, so clicks are generated from a hidden model.

    Each sample has ``n_dense`` standard-normal dense features and, per sparse feature f,
    ``bag`` ids drawn from ``vocab_sizes[f]`` (Zipf-like: a few popular ids). The hidden
    logit is a linear term of the dense features plus per-id biases plus the pairwise
    dot products of rank-``rank`` latent vectors (the bag mean per feature, and one
    projected from the dense features), i.e. the structure a DLRM's interaction layer
    models, plus noise; "clicked" is ``logit > median`` (balanced classes). The
    validation split is a multiple of ``val_batch`` (the served batch).
    """
    vocab = [int(v) for v in vocab_sizes]
    if n_dense < 1 or not vocab or min(vocab) < 1 or bag < 1 or rank < 1:
        raise ModelError("dlrm_synthetic needs n_dense, bag, rank and every vocabulary size >= 1")
    rng = np.random.default_rng(seed)
    dense = rng.normal(size=(n_samples, n_dense)).astype(np.float32)
    sparse = np.empty((n_samples, len(vocab), bag), dtype=np.int64)
    vecs = []
    logit = dense @ rng.normal(scale=0.5 / np.sqrt(n_dense), size=n_dense)
    for f, v in enumerate(vocab):
        p = 1.0 / np.arange(1, v + 1) ** 0.8
        sparse[:, f] = rng.choice(v, size=(n_samples, bag), p=p / p.sum())
        table = rng.normal(size=(v, rank)) / np.sqrt(rank)
        logit += rng.normal(scale=0.3, size=v)[sparse[:, f]].mean(1)
        vecs.append(table[sparse[:, f]].mean(1))
    vecs.append(dense @ (rng.normal(size=(n_dense, rank)) / np.sqrt(n_dense * rank)))
    for a in range(len(vecs)):
        for b in range(a + 1, len(vecs)):
            logit += np.einsum("nr,nr->n", vecs[a], vecs[b])
    logit += rng.normal(scale=noise, size=n_samples)
    labels = (logit > np.median(logit)).astype(np.int64)
    tr, va = _val_split("dlrm_synthetic", n_samples, val_batch)
    return ModelData(
        train=DataSplit([dense[tr], sparse[tr]], labels[tr]),
        val=DataSplit([dense[va], sparse[va]], labels[va]),
        task="binary",
        synthetic=True,
        description=f"SYNTHETIC click data (no real click-log data set can be shipped offline): {n_dense} dense "
        f"features, {len(vocab)} sparse features of {bag} ids each, clicks from a hidden rank-{rank} pairwise "
        f"interaction model plus noise, label = logit above median, {n_samples} samples, seed {seed}",
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
