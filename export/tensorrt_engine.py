"""Optional TensorRT engine from the exported ONNX, through the TensorRT Python API (pip install '.[tensorrt]').

The engine gets one optimisation profile over batch sizes (1, opt, max); fp16 when asked. Its parity is checked
like ONNX Runtime's, running it on CUDA buffers that PyTorch allocates.
"""

from __future__ import annotations

import numpy as np

from mri44.errors import MRI44Error
from mri44.onnx_meta import INPUT_NAME, OUTPUT_NAME

INSTALL_HINT = (
    "TensorRT is not installed: `pip install 'mri44[tensorrt]'` (or `pip install tensorrt`) on a machine with an "
    "NVIDIA GPU and driver, then rerun with --tensorrt"
)


def build_engine(onnx_bytes: bytes, size: int, fp16: bool, max_batch: int = 64, opt_batch: int = 32) -> bytes:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise MRI44Error(INSTALL_HINT) from exc
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise MRI44Error(f"TensorRT could not parse the ONNX model: {errors}")
    config = builder.create_builder_config()
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    shape = (3, size, size)
    profile.set_shape(INPUT_NAME, (1, *shape), (min(opt_batch, max_batch), *shape), (max_batch, *shape))
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise MRI44Error("TensorRT failed to build the engine (see its log above)")
    return bytes(engine)


def engine_runner(engine_bytes: bytes):
    """A function float32 NCHW numpy -> logits numpy that runs the engine on the GPU."""
    import tensorrt as trt
    import torch

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(engine_bytes)
    context = engine.create_execution_context()
    stream = torch.cuda.Stream()

    def run(batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch)).cuda()
        context.set_input_shape(INPUT_NAME, tuple(x.shape))
        out = torch.empty(tuple(context.get_tensor_shape(OUTPUT_NAME)), dtype=torch.float32, device="cuda")
        context.set_tensor_address(INPUT_NAME, x.data_ptr())
        context.set_tensor_address(OUTPUT_NAME, out.data_ptr())
        context.execute_async_v3(stream.cuda_stream)
        stream.synchronize()
        return out.cpu().numpy()

    return run
