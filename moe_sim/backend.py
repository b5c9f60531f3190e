"""Array backends: where arrays live, not which algorithm runs (in the manner of POT's `ot.backend`).

An algorithm written against a `Backend` (named `nx` where it is used) runs unchanged on NumPy or on torch,
on the CPU or a GPU. A backend supplies a few primitives; the compound operations (sigmoid, softmax, the normal
CDF) are written once here on top of them, so both backends evaluate the same formulas. Everything is float64.
"""

from __future__ import annotations

import contextlib
import functools
import math

import numpy as np
from scipy.special import erfc
from threadpoolctl import ThreadpoolController

BACKENDS = ("numpy", "torch", "cuda")


@functools.cache
def _controller() -> ThreadpoolController:
    return ThreadpoolController()


def single_threaded_blas():
    """BLAS limited to one thread: scipy's L-BFGS-B and the batched solver's host steps call it on tiny arrays
    (benchmarks/README.md). The controller is built once per process: scanning the loaded libraries costs about
    2 ms per fit (benchmarks/bench_eval.py)."""
    return _controller().limit(limits=1, user_api="blas")


class Backend:
    """The primitives an array algorithm may use, and the compound operations built on them. block_elements:
    how many elements an algorithm's largest temporary should hold (chunks of samples are sized by it): 32 MB of
    float64 on a CPU, 1 GiB on a GPU, where fewer, larger kernels keep the device busy."""

    name = ""
    block_elements = 2**22

    def single_threaded(self):
        """A context that keeps the backend's own threads to one on the CPU (`single_threaded_blas` covers BLAS)."""
        return contextlib.nullcontext()

    def samples_per_chunk(self, width: int) -> int:
        """Samples per chunk when each sample takes `width` elements of the largest temporary (at least 256)."""
        return max(256, self.block_elements // max(width, 1))

    def sigmoid(self, a):
        """The logistic function, as 0.5 + 0.5 tanh(a / 2) (stable for every a)."""
        return 0.5 + 0.5 * self.tanh(0.5 * a)

    def _shifted_exp(self, a, axis: int):
        """exp(a - max a) and the maximum along axis (kept): the overflow-free start of softmax and logsumexp."""
        top = self.max(a, axis=axis, keepdims=True)
        return self.exp(a - top), top

    def softmax(self, z, axis: int):
        e, _ = self._shifted_exp(z, axis)
        return e / self.sum(e, axis=axis, keepdims=True)

    def logsumexp(self, a, axis: int):
        """log sum exp(a) along axis (kept)."""
        e, top = self._shifted_exp(a, axis)
        return self.log(self.sum(e, axis=axis, keepdims=True)) + top

    def softmax_logsumexp(self, a, axis: int):
        """(softmax, logsumexp) along axis (kept) from one exp pass, as an E-step needs both."""
        e, top = self._shifted_exp(a, axis)
        total = self.sum(e, axis=axis, keepdims=True)
        return e / total, self.log(total) + top

    def ndtr(self, a):
        """The standard normal CDF, 0.5 erfc(-a / sqrt 2)."""
        return 0.5 * self.erfc(a * (-1.0 / math.sqrt(2.0)))

    def normal_pdf(self, a):
        return self.exp(-0.5 * a * a) * (1.0 / math.sqrt(2.0 * math.pi))


class NumpyBackend(Backend):
    name = "numpy"

    def asarray(self, a):
        return np.asarray(a, dtype=np.float64)

    def to_numpy(self, a) -> np.ndarray:
        return np.asarray(a)

    def take(self, a, index: np.ndarray):
        return a[index]

    exp, log, tanh, erfc = staticmethod(np.exp), staticmethod(np.log), staticmethod(np.tanh), staticmethod(erfc)
    matmul, concat = staticmethod(np.matmul), staticmethod(np.concatenate)

    @staticmethod
    def sum(a, axis, keepdims=False):
        return np.sum(a, axis=axis, keepdims=keepdims)

    @staticmethod
    def max(a, axis, keepdims=False):
        return np.max(a, axis=axis, keepdims=keepdims)

    @staticmethod
    def qr_r(a):
        """The R factor of the QR decomposition of each matrix in a stack (..., m, p), m >= p."""
        return np.linalg.qr(a, mode="r")

    @staticmethod
    def swap_last(a):
        """a with its last two axes swapped."""
        return np.swapaxes(a, -1, -2)

    @staticmethod
    def positive(a):
        """1.0 where a > 0, else 0.0."""
        return (a > 0).astype(np.float64)

    @staticmethod
    def ones_like(a):
        return np.ones_like(a)


class TorchBackend(Backend):
    """torch float64 arrays on `device` ("cpu" or "cuda"). Use `single_threaded()` around CPU work: like the
    NumPy path's BLAS limit, the solver's many small operations run faster on one thread than on threads that
    contend with the sweep's other workers."""

    def __init__(self, device: str = "cpu"):
        import torch

        self.torch, self.device = torch, torch.device(device)
        self.name = "torch" if device == "cpu" else device
        if device != "cpu":
            self.block_elements = 2**27

    @contextlib.contextmanager
    def single_threaded(self):
        """torch limited to one intra-op thread while the block runs (on a GPU: unchanged)."""
        before = self.torch.get_num_threads()
        if self.device.type == "cpu":
            self.torch.set_num_threads(1)
        try:
            yield
        finally:
            self.torch.set_num_threads(before)

    def asarray(self, a):
        """A float64 tensor holding a copy of a (torch cannot share a read-only array, such as a measure's)."""
        return self.torch.tensor(np.asarray(a, dtype=np.float64), device=self.device)

    def to_numpy(self, a) -> np.ndarray:
        return a.detach().cpu().numpy()

    def take(self, a, index: np.ndarray):
        """a[index]; the index is copied, as torch refuses to share a read-only array (cached triu indices)."""
        return a[self.torch.tensor(index, device=self.device)]

    def exp(self, a):
        return self.torch.exp(a)

    def log(self, a):
        return self.torch.log(a)

    def tanh(self, a):
        return self.torch.tanh(a)

    def erfc(self, a):
        return self.torch.special.erfc(a)

    def matmul(self, a, b):
        return self.torch.matmul(a, b)

    def concat(self, arrays, axis):
        return self.torch.cat(list(arrays), dim=axis)

    def sum(self, a, axis, keepdims=False):
        return self.torch.sum(a, dim=axis, keepdim=keepdims)

    def max(self, a, axis, keepdims=False):
        return self.torch.amax(a, dim=axis, keepdim=keepdims)

    def qr_r(self, a):
        """On a GPU, by `tree_qr_r`: torch factors a stack of matrices taller than 256 rows with one cuSOLVER call
        per matrix, which leaves the GPU idle (benchmarks/README.md, "Least squares on a GPU")."""
        if self.device.type == "cpu":
            return self.torch.linalg.qr(a, mode="r")[1]
        return tree_qr_r(self.torch, a)

    def swap_last(self, a):
        return a.transpose(-1, -2)

    def positive(self, a):
        return (a > 0).to(a.dtype)

    def ones_like(self, a):
        return self.torch.ones_like(a)


_LEAF_ROWS = 256  # torch factors a stack of matrices of at most 256 rows in one batched cuBLAS call


def tree_qr_r(torch, a, leaf_rows: int = _LEAF_ROWS):
    """The R factor of each matrix in a stack (..., m, p) by a tree of QRs (TSQR): split the rows into leaves of
    `leaf_rows` (the last one padded with zero rows), factor every leaf of every matrix at once, stack each
    matrix's leaf factors and repeat until one block is left. Householder on every block, so it is as stable as
    one QR of the whole matrix; R agrees with it up to the signs of its rows."""
    p = a.shape[-1]
    if 2 * p > leaf_rows:
        return torch.linalg.qr(a, mode="r")[1]
    stack = a.shape[:-2]
    while a.shape[-2] > leaf_rows:
        leaves = -(-a.shape[-2] // leaf_rows)
        pad = leaves * leaf_rows - a.shape[-2]
        if pad:
            a = torch.cat([a, a.new_zeros(*stack, pad, p)], dim=-2)
        r = torch.linalg.qr(a.reshape(*stack, leaves, leaf_rows, p), mode="r")[1]
        a = r.reshape(*stack, leaves * p, p)
    return torch.linalg.qr(a, mode="r")[1]


def check_backend(name, owner: str = "backend") -> None:
    """A ValueError naming `owner` (the option) unless it is one of BACKENDS and usable here (torch installed; a GPU for
    "cuda"): checked when an estimator is built, before any data is seen."""
    if name not in BACKENDS:
        raise ValueError(f"{owner} = {name!r} is not allowed; choose one of {', '.join(map(repr, BACKENDS))}")
    if name == "numpy":
        return
    try:
        import torch
    except ImportError:
        raise ValueError(f"{owner} = {name!r} needs torch, which is not installed: pip install torch==2.13.0 "
                         f"(a CPU build), or install moe-sim with its 'torch' extra") from None
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{owner} = 'cuda' needs a CUDA GPU, and torch sees none here; use 'torch' (CPU) or 'numpy'")


def get_backend(name: str) -> Backend:
    """The backend of that name (`BACKENDS`): NumPy, torch on the CPU, or torch on the first CUDA GPU."""
    check_backend(name)
    if name == "numpy":
        return NumpyBackend()
    return TorchBackend("cpu" if name == "torch" else "cuda")
