"""The *prune space* of a model: which channel groups can shrink, and which layers'
shapes follow from them. It is the shared language of pruning and latency tables.

A :class:`PruneGroup` is a set of channels that must be removed together (a conv's
output channels, the BN after it, the next conv's input channels, every tensor tied to
them through residual adds, concatenation offsets, depthwise convs, LSTM gate blocks).
Its width is the number of channels kept.

A :class:`PrunableLayer` is one compute-heavy op whose latency the lookup table
measures. Its input and output channel counts are either fixed or given by a group, so
a *width configuration* ``{group_id: kept}`` determines every layer's shape, and the
latency predictor maps a configuration to milliseconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

LayerKind = Literal["conv", "linear", "lstm", "gru", "attention"]


@dataclass(frozen=True)
class PruneGroup:
    id: str
    size: int  # original number of channels / neurons / hidden units
    layers: tuple[str, ...] = ()  # module names whose parameters this group cuts
    min_size: int = 1
    prunable: bool = True  # False for model outputs and --keep-layer
    #: channels come in whole blocks of ``unit`` consecutive channels that are kept or cut
    #: together: a conv group of a grouped conv with a fixed group width (RegNet /
    #: ResNeXt), an attention head (``head_dim`` channels of q, k and v). Every width of
    #: such a group is a multiple of ``unit`` (and ``min_size >= unit``).
    unit: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PrunableLayer:
    """One measured op. ``in_group``/``out_group`` name the groups that set its input and
    output channel counts (None = fixed at ``in_channels``/``out_channels``)."""

    name: str
    kind: LayerKind
    in_channels: int
    out_channels: int
    in_group: str | None = None
    out_group: str | None = None
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    depthwise: bool = False  # groups == channels (in and out follow one group)
    #: a grouped conv (1 < groups, not depthwise: ResNeXt / RegNet blocks): each output
    #: channel reads cin / groups inputs, so it costs 1 / groups of a dense conv's MACs
    groups: int = 1
    #: a grouped conv whose *group width* is fixed (RegNet / ResNeXt): pruning removes whole
    #: conv groups, so ``groups`` follows the width: ``groups = cin // group_width``
    #: (0: ``groups`` is fixed)
    group_width: int = 0
    #: attention (kind "attention": softmax(q k^T / sqrt(d)) v over ``seq_len`` tokens,
    #: ``rows`` = batch): channels per head; heads = channels // head_dim
    head_dim: int = 0
    input_hw: tuple[int, int] | None = None  # conv: spatial size of the input
    rows: int = 1  # linear: product of leading dims (batch x tokens); rnn: batch
    seq_len: int = 1  # rnn: time steps
    bias: bool = True

    def dims(self, widths: Mapping[str, int]) -> tuple[int, int]:
        """(in, out) channels of this layer under a width configuration."""
        cin = widths.get(self.in_group, self.in_channels) if self.in_group else self.in_channels
        cout = widths.get(self.out_group, self.out_channels) if self.out_group else self.out_channels
        if self.depthwise:
            cin = cout = widths.get(self.out_group or self.in_group or "", self.out_channels)
        return int(cin), int(cout)

    def signature(self, cin: int | None = None, cout: int | None = None) -> str:
        """Everything that determines this op's latency except the backend/target, so
        identical layers (e.g. repeated ResNet blocks) share one table entry."""
        cin = self.in_channels if cin is None else cin
        cout = self.out_channels if cout is None else cout
        parts = [self.kind, f"i{cin}", f"o{cout}"]
        if self.kind == "attention":  # the core has no weights: no bias token
            return "-".join(parts + [f"d{self.head_dim}", f"b{self.rows}", f"t{self.seq_len}"])
        if self.kind == "conv":
            parts += [f"k{self.kernel[0]}x{self.kernel[1]}", f"s{self.stride[0]}x{self.stride[1]}",
                      f"p{self.padding[0]}x{self.padding[1]}", f"d{self.dilation[0]}x{self.dilation[1]}",
                      f"hw{self.input_hw[0]}x{self.input_hw[1]}" if self.input_hw else "hw?",
                      "dw" if self.depthwise else (f"gw{self.group_width}" if self.group_width > 0 else
                                                   f"g{self.groups}" if self.groups > 1 else "dense")]
        elif self.kind == "linear":
            parts += [f"r{self.rows}"]
        else:
            parts += [f"b{self.rows}", f"t{self.seq_len}"]
        parts.append("b" if self.bias else "nb")
        return "-".join(parts)

    @staticmethod
    def split_signature(signature: str) -> tuple[str, int, int, str] | None:
        """The inverse of :meth:`signature` for readers of stored points (reports):
        ``(kind, cin, cout, the rest of the shape)``, or None if it is not one."""
        kind, _, rest = signature.partition("-i")
        cin, _, rest = rest.partition("-o")
        cout, _, shape = rest.partition("-")
        if not kind.isalpha() or not cin.isdigit() or not cout.isdigit() or not shape:
            return None
        return kind, int(cin), int(cout), shape

    def groups_at(self, cin: int) -> int:
        """A grouped conv's ``groups`` at ``cin`` input channels: ``cin // group_width``
        when the group width is fixed (pruning removes whole conv groups), else ``groups``."""
        if self.group_width > 0:
            return max(1, int(cin) // self.group_width)
        return max(1, self.groups)

    def macs(self, cin: int, cout: int) -> int:
        if self.kind == "conv":
            h, w = self.input_hw or (1, 1)
            oh = (h + 2 * self.padding[0] - self.dilation[0] * (self.kernel[0] - 1) - 1) // self.stride[0] + 1
            ow = (w + 2 * self.padding[1] - self.dilation[1] * (self.kernel[1] - 1) - 1) // self.stride[1] + 1
            per_out = self.kernel[0] * self.kernel[1] * (1 if self.depthwise else cin // self.groups_at(cin))
            return oh * ow * cout * per_out
        if self.kind == "linear":
            return self.rows * cin * cout
        if self.kind == "attention":  # q k^T and p v: tokens^2 * channels each, per batch row
            return 2 * max(1, self.rows) * max(1, self.seq_len) ** 2 * cin
        gates = 4 if self.kind == "lstm" else 3
        return self.seq_len * self.rows * gates * cout * (cin + cout)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PruneSpace:
    groups: dict[str, PruneGroup]
    layers: list[PrunableLayer]
    notes: list[str] = field(default_factory=list)

    def full_widths(self) -> dict[str, int]:
        return {g.id: g.size for g in self.groups.values()}

    def prunable_groups(self) -> list[PruneGroup]:
        return [g for g in self.groups.values() if g.prunable]

    def macs(self, widths: Mapping[str, int] | None = None) -> int:
        w = self.full_widths() if widths is None else widths
        return sum(layer.macs(*layer.dims(w)) for layer in self.layers)

    def to_dict(self) -> dict[str, Any]:
        return {"groups": [g.to_dict() for g in self.groups.values()], "layers": [l.to_dict() for l in self.layers]}


class LatencyModel(Protocol):
    """What search strategies need from a latency table (or any predictor)."""

    def predict(self, widths: Mapping[str, int]) -> float:
        """Predicted latency in ms of the whole model under ``widths``. Must be fast
        (thousands of calls per second): strategies call it in their inner loops."""

    def candidates(self, group: str) -> list[int]:
        """Widths worth considering for ``group``, ascending: the fast side of each
        latency step (a width one above a step is never cheaper than the step)."""
