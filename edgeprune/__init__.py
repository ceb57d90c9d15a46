"""edgeprune: hardware-aware structured pruning, ONNX compilation to ORT/OpenVINO/TVM,
and on-device benchmarking.

The package is a library first; ``edgeprune.cli`` is a thin click layer over it.
Heavy frameworks (torch, onnxruntime, openvino, tvm) are imported lazily inside the
functions that need them, so ``import edgeprune`` and ``edgeprune --help`` stay fast.
"""

__version__ = "0.1.0"
