"""Gate-aware pruning of LSTM / GRU hidden units (:class:`RNNUnitPruner`), and how
:mod:`edgeprune.prune.graph` traces recurrent layers and emits their latency layers.

torch-pruning's own LSTM pruner slices the wrong axes and fails on single-layer LSTMs,
so ``graph`` registers this one for recurrent layers.

One ``nn.LSTM`` / ``nn.GRU`` module has one ``hidden_size`` for every layer of its stack
and both directions (PyTorch has no per-layer or per-direction width), so a module is
one group of ``hidden_size`` units: unit ``j`` is unit ``j`` of every layer and of both
directions. Its importance is summed over all of them, so the group keeps the units
that matter most overall. A bidirectional module's output has two blocks of hidden
units (forward ``[0, H)``, reverse ``[H, 2H)``): the tracing hooks show the tracer a
concatenation of two blocks that both follow unit j, so the layer after it is cut at
both offsets (j and H + j).

LSTMs with ``proj_size`` are left whole: torch cannot export an LSTM with projections to
ONNX ("Unsupported: ONNX export of operator LSTM, LSTMs with projections", torch 2.x
TorchScript exporter), and ONNX's LSTM op has no projection, so edgeprune could neither
compile nor time the result. The cut itself would be clean (hidden units: gate rows of
``weight_ih``/``weight_hh``/biases and columns of ``weight_hr``; ``proj_size`` stays).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from edgeprune.errors import PruneError
from edgeprune.prune.space import PrunableLayer

RNN_TYPES = (nn.LSTM, nn.GRU)


def gates(layer: nn.Module) -> int:
    return 4 if isinstance(layer, nn.LSTM) else 3


def directions(layer: nn.Module) -> int:
    return 2 if layer.bidirectional else 1


def projected(layer: nn.Module) -> bool:
    return bool(getattr(layer, "proj_size", 0))


def _suffixes(layer: nn.Module) -> tuple[str, ...]:
    return ("", "_reverse") if layer.bidirectional else ("",)


class RNNUnitPruner:
    """Gate-aware pruning of LSTM/GRU hidden units, as a torch-pruning layer pruner.

    Weight layout (PyTorch): ``weight_ih_l{k}{sfx}`` is ``[G*H, in_k]`` and
    ``weight_hh_l{k}{sfx}`` ``[G*H, H]`` with G gate blocks of H rows each (LSTM: i, f, g,
    o; GRU: r, z, n); biases are ``[G*H]``; ``sfx`` is ``""`` and (bidirectional)
    ``"_reverse"``. ``in_k`` is the input size for layer 0 and ``H * directions`` above
    it. Removing unit j removes row j of every gate block of every layer and direction,
    column j of every ``weight_hh``, columns j (and H + j when bidirectional) of
    ``weight_ih`` of the layers above the first, and (through the dependency graph) the
    next layer's inputs j (and H + j). Output channel c of a bidirectional module is
    unit ``c mod H``. ``proj_size`` LSTMs are refused (see the module docstring).
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
        if projected(layer):
            raise PruneError(f"cannot prune hidden units of an LSTM with proj_size ({type(layer).__name__})")
        h = layer.hidden_size
        keep = self._keep(h, idxs)
        rows = torch.cat([keep + g * h for g in range(gates(layer))])
        cols_above = torch.cat([keep + d * h for d in range(directions(layer))])
        for k in range(layer.num_layers):
            for sfx in _suffixes(layer):
                w_ih = getattr(layer, f"weight_ih_l{k}{sfx}").data[rows]
                if k > 0:
                    w_ih = w_ih[:, cols_above]
                self._set(layer, f"weight_ih_l{k}{sfx}", w_ih)
                self._set(layer, f"weight_hh_l{k}{sfx}", getattr(layer, f"weight_hh_l{k}{sfx}").data[rows][:, keep])
                if layer.bias:
                    for b in ("bias_ih", "bias_hh"):
                        self._set(layer, f"{b}_l{k}{sfx}", getattr(layer, f"{b}_l{k}{sfx}").data[rows])
        layer.hidden_size = int(keep.numel())
        layer.flatten_parameters()
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        keep = self._keep(layer.input_size, idxs)
        for sfx in _suffixes(layer):
            self._set(layer, f"weight_ih_l0{sfx}", getattr(layer, f"weight_ih_l0{sfx}").data[:, keep])
        layer.input_size = int(keep.numel())
        layer.flatten_parameters()
        return layer

    def get_out_channels(self, layer: nn.Module) -> int:
        """The units the tracer links to the next layer: ``hidden_size`` (each direction's
        block follows them, see :func:`split_directions_hook`); a projected LSTM's
        output channels (``proj_size`` per direction), which are kept."""
        return layer.proj_size * directions(layer) if projected(layer) else layer.hidden_size

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.input_size

    def get_in_channel_groups(self, layer: nn.Module) -> int:
        return 1

    def get_out_channel_groups(self, layer: nn.Module) -> int:
        return 1

    def __call__(self, layer: nn.Module, idxs: Sequence[int], to_output: bool = True) -> nn.Module:
        fn = self.prune_out_channels if to_output else self.prune_in_channels
        return fn(layer, sorted(idxs))


def rewire_hook(module: nn.Module, inputs: Any, output: Any) -> Any:
    """While tracing, present an RNN to torch-pruning as one opaque op.

    Left alone, the tracer walks into the RNN's autograd internals (GRU on CPU is a
    chain of split/sigmoid/tanh ops) and misreads them as channel ops, and h_n's graph
    bypasses the tensor it associates with the module. So the output becomes
    ``out.detach() + 0 * sum(x)`` (one op whose only channel link is the RNN's input) and
    h_n / c_n become ``h.detach() + 0 * out[:, -1]`` (linked to the RNN's hidden units).
    A projected LSTM's h_n is linked to nothing. A bidirectional RNN's output is then
    split into its two direction blocks by :func:`split_directions_hook`.
    """
    out, hx = output
    x = inputs[0] if inputs else None
    if not isinstance(out, torch.Tensor) or not isinstance(x, torch.Tensor):
        return output  # PackedSequence: left to the tracer
    anchor = 0.0 * module.weight_hh_l0.sum()  # guarantees a grad_fn even if x needs no grad
    out = out.detach() + 0.0 * x.sum(-1, keepdim=True) + anchor
    if module.bidirectional and not projected(module):
        return out, hx  # torch-pruning records this op as the module; split_directions_hook relinks
    if module.bidirectional or projected(module):
        def relink(t: torch.Tensor) -> torch.Tensor:
            return t.detach() + anchor
    else:
        last = out.select(1 if module.batch_first else 0, -1) if out.dim() == 3 else out[-1]

        def relink(t: torch.Tensor) -> torch.Tensor:
            return t.detach() + 0.0 * last

    hx = tuple(relink(t) for t in hx) if isinstance(hx, tuple) else relink(hx)
    return out, hx


def split_directions_hook(module: nn.Module, inputs: Any, output: Any) -> Any:
    """The second tracing hook of a bidirectional RNN, run after torch-pruning recorded
    :func:`rewire_hook`'s op as the module (whose channels are its ``H`` units).

    The output becomes ``cat([fwd + 0 * link, rev + 0 * link])`` with ``link`` the sum of
    the module op over channels (an element-wise link to unit j, not a slice of ``2H``
    channels, which the tracer would size as the module's), so the next layer's inputs
    j and H + j both follow unit j. Row r of h_n / c_n is linked the same way (one op
    per row, so ``cat([h[-2], h[-1]])`` is seen as two blocks)."""
    core, hx = output
    if not isinstance(core, torch.Tensor) or not module.bidirectional or projected(module):
        return output
    h = module.hidden_size
    link = 0.0 * core.sum(-1, keepdim=True)
    vals = core.detach()
    out = torch.cat([vals[..., :h] + link, vals[..., h:] + link], -1)
    last = link.select(1 if module.batch_first else 0, -1) if core.dim() == 3 else link[-1]

    def relink(t: torch.Tensor) -> torch.Tensor:
        return torch.stack([t[r].detach() + last for r in range(t.shape[0])])

    hx = tuple(relink(t) for t in hx) if isinstance(hx, tuple) else relink(hx)
    return out, hx


def trace_forward(model: nn.Module, inputs: Sequence[torch.Tensor]) -> Any:
    """The forward pass torch-pruning traces: hooks registered here run after the
    tracer's own (which it registers just before calling this)."""
    handles = [m.register_forward_hook(split_directions_hook) for m in model.modules()
               if isinstance(m, RNN_TYPES) and m.bidirectional]
    try:
        return model(*inputs)
    finally:
        for hd in handles:
            hd.remove()


def rnn_layers(name: str, m: nn.Module, shape: Sequence[int], in_g: str | None, out_g: str | None,
               notes: list[str]) -> list[PrunableLayer]:
    """The measured layers of one RNN module: one unidirectional ``lstm``/``gru`` layer
    per layer of the stack and per direction (``name`` alone for a single unidirectional
    layer, else ``name.l{k}`` and, bidirectional, ``name.l{k}.reverse``): a bidirectional
    layer is two independent recurrences of the same shape, which the latency table
    times as two ordinary layers.

    Layer k > 0 of a bidirectional stack reads ``2H`` inputs (both directions of the
    layer below); a :class:`PrunableLayer` maps its input to one group's width 1:1, so
    that input is predicted at its full width (an overestimate when H shrinks, noted)."""
    kind = "lstm" if isinstance(m, nn.LSTM) else "gru"
    if len(shape) == 3:
        batch, seq = (shape[0], shape[1]) if m.batch_first else (shape[1], shape[0])
    else:
        batch, seq = 1, shape[0]
    dirs = directions(m)
    out_w = m.proj_size if projected(m) else m.hidden_size
    single = m.num_layers == 1 and dirs == 1
    layers = []
    for k in range(m.num_layers):
        if k == 0:
            cin, cin_g = m.input_size, in_g
        elif dirs == 1:
            cin, cin_g = out_w, out_g
        else:
            cin, cin_g = out_w * dirs, None
        for d in range(dirs):
            base = name if single else f"{name}.l{k}"
            layers.append(PrunableLayer(
                name=base + (".reverse" if d else ""), kind=kind, in_channels=cin, out_channels=m.hidden_size,
                in_group=cin_g, out_group=out_g, rows=int(batch), seq_len=int(seq), bias=bool(m.bias),
            ))
    if dirs == 2 and m.num_layers > 1 and out_g is not None:
        notes.append(f"{name}: layers 1..{m.num_layers - 1} read both directions' {2 * m.hidden_size} hidden "
                     "units; their latency is predicted at that full input width")
    return layers
