"""Latency measured on the target: per-layer lookup tables and the predictor pruning uses.

- :mod:`~edgeprune.latency.layers`: one prunable layer as a standalone ONNX graph;
- :mod:`~edgeprune.latency.grid`: which channel counts to measure, staircase detection;
- :mod:`~edgeprune.latency.lut`: measured entries -> per-layer tables (no interpolation
  across a step);
- :mod:`~edgeprune.latency.profiler`: measuring through deploy bundles on a device,
  end-to-end calibration and validation;
- :mod:`~edgeprune.latency.predictor`: ``LatencyModel`` (``predict``, ``candidates``);
- :mod:`~edgeprune.latency.store`: the versioned on-disk cache;
- :mod:`~edgeprune.latency.plot`: latency-vs-channels PNGs.

Typical use::

    from edgeprune.latency.profiler import ProfileSettings, profile_model
    result = profile_model(model, target, device, "onnxruntime", ProfileSettings())
    result.predictor.predict({"layer1.0.conv1": 48})   # ms
    result.predictor.candidates("layer1.0.conv1")      # [8, 16, ..., 64]
"""
