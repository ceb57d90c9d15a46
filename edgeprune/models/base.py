"""Typed records for a loaded model and its data.

A model is deployed at a fixed *deployment batch* (1 image for the CNNs, a batch of
requests for the recommender); ``example_inputs`` carry that shape. Evaluation data is
cut into chunks of the same shape so the exact compiled artifact can score it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:  # torch is heavy: only for type checkers
    import torch

Task = Literal["classification", "binary"]


@dataclass
class DataSplit:
    """One split: ``inputs[i]`` is the i-th model input stacked over samples (dim 0)."""

    inputs: list[np.ndarray]
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class ModelData:
    """Train/validation data of a model and how to score it.

    ``task='classification'``: outputs are logits [B, C], metric = top-1 accuracy.
    ``task='binary'``: outputs are one logit per sample [B] or [B, 1], metric = accuracy
    of ``logit > 0`` against 0/1 labels.
    """

    train: DataSplit
    val: DataSplit
    task: Task
    synthetic: bool = False
    description: str = ""


@dataclass
class LoadedModel:
    """What every later stage needs to know about a model.

    Exactly one of ``module`` (a torch model we can prune and export) or ``onnx_path``
    (an ONNX file given by the user, not prunable) is set.
    """

    name: str
    spec: str
    input_names: list[str]
    example_inputs: list[np.ndarray]
    output_names: list[str] = field(default_factory=lambda: ["output"])
    module: "torch.nn.Module | None" = None
    onnx_path: Path | None = None
    data: ModelData | None = None
    notes: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return int(self.example_inputs[0].shape[0])

    @property
    def input_shapes(self) -> list[tuple[int, ...]]:
        return [tuple(int(d) for d in x.shape) for x in self.example_inputs]
