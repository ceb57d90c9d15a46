"""The on-device benchmark runner: times a deploy bundle's jobs on the machine it runs on.

It needs only Python >= 3.8, numpy and the runtime of each job (onnxruntime, openvino
or apache-tvm), and imports nothing from the rest of edgeprune: it runs with a plain
python on a board. The package is the foundation layer's odd one out: the host never
calls it in-process to time anything, it ships it.

How it is shipped: as one zipapp, ``runner.pyz``, written into every bundle by
:func:`edgeprune.runner.ship.write_runner` (``python runner.pyz BUNDLE``,
``python runner.pyz --probe``). A zipapp rather than a copied package directory
because the bundle stays "one runner file + manifest + job files": every executor
(local, SSH upload, an SFTP-ed folder run by hand) moves and starts it exactly as it
did a single script, a stale half-copied package cannot happen, and Python runs it on
every platform with nothing installed. Inside the zip the package is named
``edgeprune_runner`` (so it cannot be mistaken for, or shadow, an installed edgeprune);
its modules use relative imports only, so the same files run as ``edgeprune.runner``
(``python -m edgeprune.runner``, tests) and from the zip. :mod:`.probe` is also sent on
its own on stdin for an SSH probe, so it imports nothing but the standard library.

Modules, one job each::

    cli        argument parsing, the job loop, progress lines, exit codes
    manifest   the bundle contract: manifest.json in (format, job defaults), results.jsonl out
    probe      what this machine is (CPU name and flags, runtimes); imported by edgeprune.host
    data       the bundle's npz arrays, checked against the artifact's inputs
    adapters/  one loader per runtime behind one Model interface (ort, openvino, tvm)
    timing     the timing loop and the runtimes' per-node (kernel) counters
    gate       the steady gate: time a series only in the device's steady state
    verify     outputs against the reference, accuracy on eval data
    affinity   pinning a worker to the job's cores
    job        one job, start to finish, as a result dict that never raises
    worker     worker processes (one per backend/thread group) and crash isolation
    ship       (host side) build runner.pyz and write it into a bundle

Exit code of the runner: 0 if every job ran, 1 if any job failed, 2 on a bad manifest
or usage.
"""

# the probe *function* stays in its module: re-exported here it would hide the module
# ``edgeprune.runner.probe`` behind a function of the same name
from .probe import RUNNER_VERSION, cpu_flags, cpu_model

__all__ = ["RUNNER_VERSION", "cpu_flags", "cpu_model"]
