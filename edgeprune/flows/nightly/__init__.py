"""``edgeprune nightly``: run a model x target x device x backend matrix, compare every
cell with its baseline, store everything, write the reports, and say in the exit code
whether anything regressed.

The matrix file (``nightly.yaml``)::

    name: nightly-host
    matrix:                      # the cross product of these lists ...
      models: [zoo:digits-cnn, zoo:mlp-recsys]
      targets: [host]
      devices: [local]           # names from devices.yaml
      backends: [onnxruntime, openvino]
      exclude:                   # ... minus cells matching every key given here
        - {model: zoo:mlp-recsys, backend: openvino}
      include:                   # ... plus extra cells (fields default to the lists' first)
        - {model: zoo:lstm-digits, backend: onnxruntime, bench: {min_runs: 30}}
    bench: {warmup: 5, min_runs: 50, min_time_s: 0.5}   # + rounds: 3, steady_gate: false
    detection: {min_effect: 0.03, confidence: 0.99, max_remeasure: 2, accuracy_tolerance: 0.5}
    baseline: {runs: 5}          # or {pin: 42}: compare against run 42
                                 # + retime: true, rounds: 6, keep: 3, artifacts: DIR

Execution: devices run in parallel (one thread each); the cells of one device run one at
a time. Every ``kind: local`` device is this machine, so a host-wide lock lets only one
of them (in any process) time at once; SSH boards have their own per-board lock. Every
cell is stored the moment it is measured. Each good night's artifact is kept beside the
database (:mod:`.keep`); later nights time the baseline's artifact interleaved with their
own in *paired* batches (:mod:`.pair`) and are judged on the paired difference, so a busy
host cannot fake a regression (:mod:`edgeprune.results.paired`; without a kept artifact the
history judges). An UNKNOWN latency verdict (a busy device included) triggers up to
``max_remeasure`` more batches of that cell (artifacts reused), judged together with the
first; a first SLOWER verdict is confirmed by one such batch before it is reported (a slow
episode of a shared machine then has to last across two runner processes to page anyone).

Exit status (:attr:`NightlyResult.exit_code`): 0 nothing regressed, 1 a latency,
accuracy or parity regression, 2 the run itself failed (a cell could not be measured,
or the run was interrupted); cells that completed are stored and reported either way.

Parts: :mod:`.matrix` (the file, its cells, shards), :mod:`.cell` (compile, measure,
re-measure and judge one cell), :mod:`.keep` (kept artifacts), :mod:`.pair` (one paired
batch), :mod:`.run` (devices in parallel, interrupts, the run's status, reports). The
statistics and the judging rules are the results layer's (:mod:`edgeprune.results.detect`,
:mod:`edgeprune.results.paired`, :mod:`edgeprune.results.evaluate`).
"""

from edgeprune.flows.nightly.matrix import Cell, NightlyConfig, NightlyFile, expand, load_matrix, shard
from edgeprune.flows.nightly.run import EXIT_FAILED, EXIT_OK, EXIT_REGRESSION, NightlyResult, NightlyRunner, run_nightly

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_REGRESSION", "Cell", "NightlyConfig", "NightlyFile", "NightlyResult",
           "NightlyRunner", "expand", "load_matrix", "run_nightly", "shard"]
