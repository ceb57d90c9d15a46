"""Latency measured on the target: per-layer lookup tables and the predictor pruning uses.

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
- :mod:`~edgeprune.latency.plot`: latency-vs-channels PNGs.

The orchestration (profile a model, validate the predictor) is :mod:`edgeprune.flows.profile`::

    from edgeprune.flows.profile import profile_model
    from edgeprune.latency.settings import ProfileSettings
    result = profile_model(model, target, device, "onnxruntime", ProfileSettings())
    result.predictor.predict({"layer1.0.conv1": 48})   # ms
    result.predictor.candidates("layer1.0.conv1")      # [8, 16, ..., 64]
"""
