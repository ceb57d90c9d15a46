"""Gate-aware pruning of LSTM / GRU hidden units (:class:`RNNUnitPruner`).

torch-pruning's own LSTM pruner slices the wrong axes and fails on single-layer LSTMs,
so :mod:`edgeprune.prune.graph` registers this one for recurrent layers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from edgeprune.errors import PruneError

RNN_TYPES = (nn.LSTM, nn.GRU)


def gates(layer: nn.Module) -> int:
    return 4 if isinstance(layer, nn.LSTM) else 3


class RNNUnitPruner:
    """Gate-aware pruning of LSTM/GRU hidden units, as a torch-pruning layer pruner.

    Weight layout (PyTorch): ``weight_ih_l{k}`` is ``[G*H, in]`` and ``weight_hh_l{k}``
    ``[G*H, H]`` with G gate blocks of H rows each (LSTM: i, f, g, o; GRU: r, z, n);
    biases are ``[G*H]``. Removing unit j removes row j of every gate block in every
    layer, column j of every ``weight_hh``, column j of ``weight_ih`` of the layers above
    the first, and (through the dependency graph) input j of the next layer.
    Unidirectional, ``proj_size == 0`` only (``build_space`` keeps the others whole).
    """

    TARGET_MODULES = RNN_TYPES

    def __init__(self) -> None:
        self.pruning_dim = 1

    @staticmethod
    def _keep(n: int, idxs: Sequence[int]) -> torch.Tensor:
        drop = set(int(i) for i in idxs)
        return torch.tensor([i for i in range(n) if i not in drop], dtype=torch.long)

    @staticmethod
    def _set(layer: nn.Module, name: str, value: torch.Tensor) -> None:
        # RNNBase.__setattr__ refreshes _flat_weights when a weight is replaced
        setattr(layer, name, nn.Parameter(value.contiguous(), requires_grad=getattr(layer, name).requires_grad))

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        if layer.bidirectional or getattr(layer, "proj_size", 0):
            raise PruneError(f"cannot prune hidden units of a bidirectional / projected {type(layer).__name__}")
        h = layer.hidden_size
        keep = self._keep(h, idxs)
        rows = torch.cat([keep + g * h for g in range(gates(layer))])
        for k in range(layer.num_layers):
            w_ih = getattr(layer, f"weight_ih_l{k}").data
            w_ih = w_ih[rows]
            if k > 0:
                w_ih = w_ih[:, keep]
            self._set(layer, f"weight_ih_l{k}", w_ih)
            self._set(layer, f"weight_hh_l{k}", getattr(layer, f"weight_hh_l{k}").data[rows][:, keep])
            if layer.bias:
                for b in ("bias_ih", "bias_hh"):
                    self._set(layer, f"{b}_l{k}", getattr(layer, f"{b}_l{k}").data[rows])
        layer.hidden_size = int(keep.numel())
        layer.flatten_parameters()
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        keep = self._keep(layer.input_size, idxs)
        for sfx in ("", "_reverse") if layer.bidirectional else ("",):
            self._set(layer, f"weight_ih_l0{sfx}", getattr(layer, f"weight_ih_l0{sfx}").data[:, keep])
        layer.input_size = int(keep.numel())
        layer.flatten_parameters()
        return layer

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.hidden_size

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.input_size

    def get_in_channel_groups(self, layer: nn.Module) -> int:
        return 1

    def get_out_channel_groups(self, layer: nn.Module) -> int:
        return 1

    def __call__(self, layer: nn.Module, idxs: Sequence[int], to_output: bool = True) -> nn.Module:
        fn = self.prune_out_channels if to_output else self.prune_in_channels
        return fn(layer, sorted(idxs))
