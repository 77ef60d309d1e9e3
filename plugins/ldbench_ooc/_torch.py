"""Block kernels on torch tensors, on a CUDA device or on the CPU.

Each block lives on the device as a column-major tensor (the transpose view
of a C-ordered tensor), so it has the same bytes as the host buffer it was
read into. With CUDA, host buffers are pinned, blocks are copied in on one
stream and out on another, and events order those copies against the
kernels of the compute stream. The reader thread starts a block's copy to the
device as soon as it is read, and the writer thread waits for the copy back
only when it is about to write, so both overlap the computation.

With ``device="torch-cpu"`` the same code runs on CPU tensors, with real
copies between the host buffer and the block's tensor and no streams.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from ._numpy import Block
from ._pivots import (
    BlockLogdet,
    NotPositiveDefinite,
    ZeroPivot,
    cholesky_logdet,
    ldl_logdet,
    lu_logdet,
    swaps_to_permutation,
    two_by_two_starts,
)

logger = logging.getLogger(__name__)


class TorchBackend:
    """Moves blocks between host buffers and torch tensors on ``device``.

    Parameters
    ----------
    device
        ``"cuda"`` (the current CUDA device) or ``"torch-cpu"``.
    """

    def __init__(self, device: str) -> None:
        import torch

        self.torch = torch
        self.cuda = device == "cuda"
        if self.cuda and not torch.cuda.is_available():
            raise RuntimeError(
                "device 'cuda' was requested but torch finds no CUDA device; "
                "use device 'cpu' or install a CUDA build of torch"
            )
        self.device = torch.device("cuda" if self.cuda else "cpu")
        self.name = device
        if self.cuda:
            self.copy_in = torch.cuda.Stream()
            self.copy_out = torch.cuda.Stream()

    def allocate_host(self, elements: int) -> np.ndarray:
        """Return a flat float64 host buffer, page-locked when CUDA is used."""
        tensor = self.torch.empty(elements, dtype=self.torch.float64, pin_memory=self.cuda)
        # The array keeps the tensor, and with it the pinned memory, alive.
        return tensor.numpy()

    def _host_tensor(self, block: Block) -> Any:
        flat = self.torch.from_numpy(block.host[: block.rows * block.cols])
        return flat.view(block.cols, block.rows)

    def stage_in(self, buffer: np.ndarray, rows: int, cols: int) -> Block:
        """Start copying a freshly read buffer to the device (reader thread)."""
        torch = self.torch
        block = Block(buffer, None, rows, cols)
        host = self._host_tensor(block)
        tensor = torch.empty((cols, rows), dtype=torch.float64, device=self.device)
        if self.cuda:
            with torch.cuda.stream(self.copy_in):
                tensor.copy_(host, non_blocking=True)
                event = torch.cuda.Event()
                event.record(self.copy_in)
            tensor.record_stream(self.copy_in)
            block.staged = event
        else:
            tensor.copy_(host)
        block.data = tensor.mT
        return block

    def ready(self, block: Block) -> Any:
        """Return the block's tensor once its copy to the device is ordered
        before the compute stream's next kernels."""
        if block.staged is not None:
            self.torch.cuda.current_stream().wait_event(block.staged)
            block.staged = None
        return block.data

    def stage_out(self, block: Block) -> Callable[[], None] | None:
        """Start copying the block back into its host buffer.

        Returns the function the writer calls before it writes the buffer, or
        ``None`` when the copy has already finished.
        """
        torch = self.torch
        host = self._host_tensor(block)
        if not self.cuda:
            host.copy_(block.data.mT)
            return None
        computed = torch.cuda.Event()
        computed.record(torch.cuda.current_stream())
        self.copy_out.wait_event(computed)
        with torch.cuda.stream(self.copy_out):
            host.copy_(block.data.mT, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record(self.copy_out)
        block.data.record_stream(self.copy_out)
        return copied.synchronize

    def synchronize(self) -> None:
        """Wait for every queued kernel and copy on the device."""
        if self.cuda:
            self.torch.cuda.synchronize(self.device)

    def to_host(self, tensor: Any) -> np.ndarray:
        """Return a small tensor (a diagonal, pivots) as a NumPy array."""
        return tensor.detach().to("cpu").numpy()


class TorchCholesky:
    """Cholesky ``B_kk = L L^T``; the panel is ``P_ik = Q_ik = B_ik L^-T``."""

    def __init__(self, backend: TorchBackend, max_size: int) -> None:
        self.backend = backend
        self.torch = backend.torch

    def factor(self, diagonal: Any) -> BlockLogdet:
        factor, info = self.torch.linalg.cholesky_ex(diagonal)
        info = int(info)
        if info > 0:
            raise NotPositiveDefinite(info - 1)
        self._factor = factor
        return cholesky_logdet(self.backend.to_host(factor.diagonal()))

    def panel(self, block: Any) -> Any:
        # X L^T = B_ik gives X = B_ik L^-T.
        solved = self.torch.linalg.solve_triangular(
            self._factor.mT, block, upper=True, left=False
        )
        block.copy_(solved)
        return block

    def update(self, target: Any, left: Any, right: Any) -> None:
        target.addmm_(left, right.mT, alpha=-1.0)

    update_diagonal = update


class TorchLDL:
    """Bunch-Kaufman ``B_kk = P L D L^T P^T`` (``torch.linalg.ldl_factor``).

    The panel stored on disk is ``B_ik`` itself and the left factor is
    ``Q_ik = B_ik B_kk^-1`` (``ldl_solve``), so ``Q_ik P_jk^T`` is the same
    product as in the host kernel. The solve costs twice the FLOPs of the
    host kernel's triangular solve, on the panel only.
    """

    def __init__(self, backend: TorchBackend, max_size: int) -> None:
        self.backend = backend
        self.torch = backend.torch

    def factor(self, diagonal: Any) -> BlockLogdet:
        factor, pivots, _ = self.torch.linalg.ldl_factor_ex(diagonal)
        to_host = self.backend.to_host
        pivots_host = to_host(pivots)
        starts = two_by_two_starts(pivots_host < 0)
        off = to_host(factor.diagonal(-1))[starts]
        result, _ = ldl_logdet(to_host(factor.diagonal()).copy(), starts, off)
        self._factor, self._pivots = factor, pivots
        return result

    def panel(self, block: Any) -> Any:
        # B_kk is symmetric, so B_ik B_kk^-1 = (B_kk^-1 B_ik^T)^T.
        return self.torch.linalg.ldl_solve(self._factor, self._pivots, block.mT).mT

    def update(self, target: Any, left: Any, right: Any) -> None:
        target.addmm_(left, right.mT, alpha=-1.0)

    update_diagonal = update


class TorchLU:
    """Partial-pivoting ``B_kk = P L U`` (``torch.linalg.lu_factor``); the row
    panel is ``U_kj = L^-1 P^T B_kj`` and the column panel ``L_ik = B_ik U^-1``."""

    def __init__(self, backend: TorchBackend, max_size: int) -> None:
        self.backend = backend
        self.torch = backend.torch

    def factor(self, diagonal: Any) -> BlockLogdet:
        factor, pivots, info = self.torch.linalg.lu_factor_ex(diagonal)
        info = int(info)
        if info > 0:
            raise ZeroPivot(info - 1)
        perm, swaps = swaps_to_permutation(self.backend.to_host(pivots), base=1)
        self._factor = factor
        self._perm = self.torch.as_tensor(perm, device=factor.device)
        return lu_logdet(self.backend.to_host(factor.diagonal()), swaps)

    def row_panel(self, block: Any) -> None:
        solved = self.torch.linalg.solve_triangular(
            self._factor, block[self._perm], upper=False, unitriangular=True
        )
        block.copy_(solved)

    def column_panel(self, block: Any) -> None:
        solved = self.torch.linalg.solve_triangular(
            self._factor, block, upper=True, left=False
        )
        block.copy_(solved)

    def update(self, target: Any, left: Any, right: Any) -> None:
        target.addmm_(left, right, alpha=-1.0)


KERNELS = {"cholesky": TorchCholesky, "ldl": TorchLDL, "lu": TorchLU}
