"""CKM Edge runtime: the torch-free edge side (codec, operators, schedule, sampler, engines, server).

Only numpy, ONNX Runtime / TensorRT and gRPC may be imported below this package; a test
enforces that importing it never loads torch.
"""

__version__ = "0.1.0"
