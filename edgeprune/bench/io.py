"""Writing the numpy files a bundle job refers to (inputs, expected outputs, eval chunks)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeprune.models.base import DataSplit


def save_arrays(path: Path, prefix: str, arrays: list[np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **{f"{prefix}{i}": np.ascontiguousarray(a) for i, a in enumerate(arrays)})
    tmp.replace(path)


def save_eval(path: Path, split: DataSplit, batch: int, max_samples: int | None = None) -> int:
    """Cut ``split`` into chunks of the deployment batch; returns samples written.

    A trailing partial chunk is dropped: the compiled artifact has a static batch.
    """
    n = len(split) if max_samples is None else min(len(split), max_samples)
    chunks = n // batch
    if chunks == 0:
        return 0
    used = chunks * batch
    arrays = {f"in{i}": x[:used].reshape((chunks, batch) + x.shape[1:]) for i, x in enumerate(split.inputs)}
    arrays["labels"] = split.labels[:used].reshape(chunks, batch)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)
    return used
