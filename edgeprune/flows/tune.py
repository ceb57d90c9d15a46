"""``tune``: the library function behind ``edgeprune tune``.

Refuse early -> load and export the model -> pick the tuning database -> (SSH device: start
a TVM RPC server on the board, reached through the SSH session) -> one MetaSchedule
session (:func:`edgeprune.compile.backends.tvm.session.tune_model`) -> its report.

Cross-target tuning without a device is refused *before* the model is loaded or exported
(that can take a minute for a zoo model), because timings taken on this host would tune for
the wrong processor. Records measured on an *emulated* board go to a separate database
(``<key>-emulated``) that real builds never apply: emulated timings are meaningless.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edgeprune.compile.backends.tvm import (RpcSettings, TuneReport, TuneSettings, TuningDatabase, check_measurable,
                                           tune_model)
from edgeprune.compile.export import export_onnx
from edgeprune.config.devices import LOCAL, Device
from edgeprune.config.targets import Target
from edgeprune.models.base import LoadedModel

Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class TuneOptions:
    """What to tune for, where to measure, where records and the exported model go.

    ``device``: :data:`~edgeprune.config.devices.LOCAL` measures on this host (native
    targets only) or on the RPC tracker of ``settings.rpc``; an SSH device gets an RPC
    server through its SSH session. ``db_dir``: a database folder instead of the
    target's own (``$EDGEPRUNE_TUNING_DIR`` / ``$EDGEPRUNE_CACHE/tuning``).
    """

    target: Target
    out_dir: Path  # where the exported model.onnx goes
    device: Device = LOCAL
    settings: TuneSettings = field(default_factory=TuneSettings)
    db_dir: Path | None = None
    status_only: bool = False  # list the kernels and what the database has; no tuning

    @property
    def over_ssh(self) -> bool:
        return not self.status_only and self.settings.rpc is None and self.device.kind == "ssh"


def tuning_database(options: TuneOptions, log: Log = _stderr) -> TuningDatabase:
    """``--tuning-dir`` if given, else the target's database; emulated boards get their own."""
    if options.db_dir:
        return TuningDatabase(options.db_dir)
    db = TuningDatabase.for_target(options.target)
    if options.over_ssh and options.device.emulated:
        db = TuningDatabase(db.path.with_name(db.path.name + "-emulated"))
        log(f"note: '{options.device.name}' is EMULATED: timings are meaningless, records go to {db.path} "
            "(never applied to real builds)")
    return db


def tune(load_model: Callable[[], LoadedModel], options: TuneOptions, log: Log = _stderr) -> TuneReport:
    """Tune the model ``load_model()`` returns for ``options.target``; see the module docstring.

    ``load_model`` is called only once tuning is known to be possible. Raises ``TuningError`` (a ``BackendError``) when the
    target cannot be measured, ``DeviceError`` when the SSH board cannot serve RPC.
    """
    target, settings = options.target, options.settings
    if not options.status_only and not options.over_ssh:
        check_measurable(target, settings.rpc)  # refuse before loading and exporting anything
    model = load_model()
    exp = export_onnx(model, options.out_dir / "model.onnx")
    db = tuning_database(options, log)
    with contextlib.ExitStack() as stack:
        if options.over_ssh:  # an RPC server on the board, reached through the SSH session
            from edgeprune.bench.rpc_tunnel import ssh_rpc_board

            tracker = stack.enter_context(ssh_rpc_board(options.device, target.name, log=log))
            settings = dataclasses.replace(settings, rpc=RpcSettings(str(tracker), target.name))
        report = tune_model(exp.path, target, settings, db=db, model_name=model.name, log=log,
                            status_only=options.status_only)
    if options.over_ssh:
        report.measured_on = f"ssh://{options.device.name} (TVM RPC tunnelled over SSH)"
    return report
