"""The ``cuda`` backend: a model run by PyTorch on an NVIDIA GPU.

Everything it does (precision validated against fp32, CUDA graphs per frame shape, pinned
staging, copies on their own streams, fp32 redo of frames outside the validated range) is the
shared CUDA runtime in :mod:`livedenoise.inference.engines._cuda`; this backend runs the
model eagerly. ``device="cpu"`` runs the same logic on the CPU, for tests.
"""

from __future__ import annotations

from livedenoise.inference.engines._cuda import CudaEngine

__all__ = ["TorchCUDAEngine"]


class TorchCUDAEngine(CudaEngine):
    """The Engine protocol over eager PyTorch on a CUDA GPU (parameters as :class:`CudaEngine`)."""

    name = "cuda"
