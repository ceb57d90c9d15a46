"""The default recovery recipe after a cut: one place for the numbers the pruner, the
depth stage, the CLI's ``--help`` and the benchmarks' baselines all use (no torch import:
the CLI reads them to print its defaults)."""

from __future__ import annotations

from collections.abc import Iterable

#: the default recovery after a cut (``PruneOptions`` reads these): measured with
#: ``benchmarks/recovery.py`` on the same 0.5-budget cuts of MobileNetV3-Small, RegNetX,
#: a ViT and digits-cnn (2026-12-02, docs/results.md): 3 epochs at 1e-3 without
#: distillation lost 2.5 / 5.6 / 3.6 (7.8 before the keep-the-better rule) / 0.3 points;
#: 8 epochs distilled from the unpruned model: -0.0 / -0.3 / +3.6 (the ViT gained) / 0.0
#: points, at 2e-3 for the convolutional nets and 1e-3 for the ViT, which lost 5.6
#: points at 2e-3 and 28.6 at 3e-3
DEFAULT_FINETUNE_EPOCHS = 8.0
DEFAULT_DISTILL = True
#: Adam's learning rate: BatchNorm conv nets recover best at CONV_LR; transformers (and
#: the RNN / MLP models, not measured at the higher rate) keep DEFAULT_LR
DEFAULT_LR = 1e-3
CONV_LR = 2e-3


def default_lr(layer_kinds: Iterable[str]) -> float:
    """The learning rate a model's recovery defaults to, from the kinds of its prunable
    layers: :data:`CONV_LR` for convolutional nets without attention, :data:`DEFAULT_LR`
    otherwise (see :data:`DEFAULT_FINETUNE_EPOCHS` for the measurement)."""
    kinds = set(layer_kinds)
    return CONV_LR if "conv" in kinds and "attention" not in kinds else DEFAULT_LR
