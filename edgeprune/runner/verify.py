"""Is the artifact right? Its outputs against the reference (max abs diff), and its
accuracy (percent) on the bundle's eval data per ``task``."""

from __future__ import annotations

import os

from .errors import JobError, one_line


def verify(np, outputs: list, expected: list) -> float:
    """Max abs difference over all outputs (NaN if any output is NaN)."""
    if len(outputs) != len(expected):
        raise JobError("artifact produced %d output(s) but %d were expected" % (len(outputs), len(expected)))
    diff = 0.0
    for i, (o, e) in enumerate(zip(outputs, expected)):
        o = np.asarray(o)
        if o.shape != e.shape:
            raise JobError("output %d has shape %s but the reference has %s" % (i, list(o.shape), list(e.shape)))
        if o.size:
            d = float(np.max(np.abs(o.astype(np.float64) - e.astype(np.float64))))
            if d != d:  # NaN
                return float("nan")
            diff = max(diff, d)
    return diff


def accuracy(np, model, path: str, task: str | None, dtypes: list) -> tuple[float | None, int]:
    """(percent correct, samples) on an eval npz: ``in0..inK`` [chunks, *input_shape] and
    ``labels`` [chunks, batch]; ``task`` "binary" thresholds logit 0, else argmax."""
    try:
        data = np.load(path)
    except (OSError, ValueError) as exc:
        raise JobError("cannot read %s: %s" % (os.path.basename(path), one_line(exc)))
    with data:
        keys = sorted((k for k in data.files if k.startswith("in") and k[2:].isdigit()), key=lambda k: int(k[2:]))
        if "labels" not in data.files or not keys:
            raise JobError("eval data %s needs arrays in0.. and labels" % os.path.basename(path))
        ins = [data[k] for k in keys]
        labels = data["labels"]
    chunks = labels.shape[0]
    correct = total = 0
    for c in range(chunks):
        arrays = [np.ascontiguousarray(x[c].astype(dt) if dt else x[c]) for x, dt in zip(ins, dtypes)]
        logits = np.asarray(model.outputs(model.prepare(arrays))[0])
        lab = np.asarray(labels[c]).reshape(-1)
        b = lab.shape[0]
        flat = logits.reshape(b, -1)
        if task == "binary":
            pred = (flat[:, 0] > 0).astype(np.int64)
        else:
            pred = flat.argmax(axis=1)
        correct += int(np.sum(pred == lab.astype(np.int64)))
        total += b
    if total == 0:
        return None, 0
    return 100.0 * correct / total, total
