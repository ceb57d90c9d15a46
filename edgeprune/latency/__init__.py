"""Latency measured on the target: per-layer lookup tables, the device latency model, and
the predictor pruning uses.

- :mod:`~edgeprune.latency.layers`: one prunable layer as a standalone ONNX graph;
- :mod:`~edgeprune.latency.grid`: which channel counts to measure, staircase detection;
- :mod:`~edgeprune.latency.entry`: one measured point and its estimator (``robust_ms``);
- :mod:`~edgeprune.latency.lut`: measured entries -> per-layer tables (no interpolation
  across a step);
- :mod:`~edgeprune.latency.points`: what to measure next, until a table is final;
- :mod:`~edgeprune.latency.settings`: ``ProfileSettings``, timing and drift modes, progress;
- :mod:`~edgeprune.latency.layer_bundle`: jobs -> a built deploy bundle of interleaved series;
- :mod:`~edgeprune.latency.series`: runner results -> per-round values in the table's unit;
- :mod:`~edgeprune.latency.measurer`: timing jobs on a device in chunks (``bench.measure``);
- :mod:`~edgeprune.latency.variants`: the model's prune space, pruned variants as jobs;
- :mod:`~edgeprune.latency.predictor`: ``LatencyPredictor`` (``predict``, ``candidates``);
- :mod:`~edgeprune.latency.records`: ``ProfileResult``, ``ValidationReport``;
- :mod:`~edgeprune.latency.store`: the versioned on-disk cache;
- :mod:`~edgeprune.latency.plot`: latency-vs-channels PNGs;
- :mod:`~edgeprune.latency.recorder`: ``PointRecorder``, the one writer of measured points;
- the device latency model, measured once per device and used for every model:
  :mod:`~edgeprune.latency.opshape` / :mod:`~edgeprune.latency.ops` (non-prunable ops and
  their graphs), :mod:`~edgeprune.latency.suite` (the calibration suite),
  :mod:`~edgeprune.latency.features` and :mod:`~edgeprune.latency.devmodel` (features, the
  fitted regressor and its uncertainty), :mod:`~edgeprune.latency.devmodel_store` (its
  sidecar file), :mod:`~edgeprune.latency.predicted` (a model's table answered by it),
  :mod:`~edgeprune.latency.plan` (which of the model's own points to measure within the
  profile budget), :mod:`~edgeprune.latency.adaptive` (``AdaptiveLatency``: the search's
  choice confirmed, verified end to end and learned from).

The orchestration (profile a model, validate the predictor) is :mod:`edgeprune.flows.profile`::

    from edgeprune.flows.profile import profile_model
    from edgeprune.latency.settings import ProfileSettings
    result = profile_model(model, target, device, "onnxruntime", ProfileSettings())
    result.predictor.predict({"layer1.0.conv1": 48})   # ms
    result.predictor.candidates("layer1.0.conv1")      # [8, 16, ..., 64]
"""
