"""ONNX export and the backend compilers behind one interface."""
