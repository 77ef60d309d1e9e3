"""Per-sample Jacobians and their Gram blocks, with torch.func.

This module imports torch at the top, so import it only when a matrix is
formed.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap
from tqdm.auto import tqdm

from ldbench import BlockWriter

from ._arch import ArchitectureCost
from ._plan import FormationPlan

logger = logging.getLogger(__name__)

#: torch dtype of each value of the ``dtype`` parameter. "tf32" computes in
#: float32 and lets CUDA matrix products use TensorFloat-32.
TORCH_DTYPES = {
    "float64": torch.float64,
    "float32": torch.float32,
    "tf32": torch.float32,
    "bfloat16": torch.bfloat16,
}

JacobianFunction = Callable[[torch.Tensor, int, torch.Tensor], None]


def jacobian_function(model: nn.Module) -> JacobianFunction:
    """Return a function that writes the Jacobian rows of a batch of samples.

    The returned ``jacobian(inputs, chunk, rows)`` takes inputs of shape
    ``(b, channels, height, width)`` in the model's dtype and device. It
    fills the contiguous ``rows`` of shape ``(b * d, P)`` with J. Row
    ``s * d + c`` is the gradient of output c of sample s with respect to all
    parameters, in the order of ``model.named_parameters()``. It calls the
    vectorised Jacobian on ``chunk`` samples at a time to bound the work
    space.
    """
    names = [name for name, _ in model.named_parameters()]
    params = {name: p.detach() for name, p in model.named_parameters()}
    buffers = {name: b.detach() for name, b in model.named_buffers()}
    sizes = [params[name].numel() for name in names]

    def output(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        # The model sees a batch of one, so each sample's outputs depend on
        # that sample only.
        return functional_call(model, (p, buffers), (x.unsqueeze(0),)).squeeze(0)

    per_sample = vmap(jacrev(output), in_dims=(None, 0))

    def jacobian(inputs: torch.Tensor, chunk: int, rows: torch.Tensor) -> None:
        count = inputs.shape[0]
        # (samples, outputs, P) view, so each part is copied in place without
        # a reshaped temporary.
        grid = rows.view(count, rows.shape[0] // count, rows.shape[1])
        for start in range(0, count, chunk):
            stop = min(start + chunk, count)
            with torch.no_grad():
                parts = per_sample(params, inputs[start:stop])
            column = 0
            for name, size in zip(names, sizes):
                target = grid[start:stop, :, column : column + size]
                target.copy_(parts[name].flatten(2))
                column += size
            del parts

    return jacobian


@dataclass
class FormationCounts:
    """Work done by one call of :func:`form_gram`.

    Attributes
    ----------
    steps
        Steps of the plan: one per group and column block at or after it.
    steps_skipped
        Steps already finished by an interrupted formation, so not redone.
    pairs_computed
        Gram blocks ``J_i J_j^T`` (i <= j) computed in this call.
    jacobian_samples
        Per-sample Jacobians computed in this call.
    gram_flops
        FLOPs of the matrix products of this call (multiply-add = 2).
    """

    steps: int = 0
    steps_skipped: int = 0
    pairs_computed: int = 0
    jacobian_samples: int = 0
    gram_flops: float = 0.0


@contextlib.contextmanager
def tf32_matmul(enabled: bool) -> Iterator[None]:
    """Allow TensorFloat-32 in CUDA matrix products and convolutions while
    the block runs, and restore the previous settings afterwards."""
    matmul = torch.backends.cuda.matmul.allow_tf32
    cudnn = torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = cudnn


def step_tag(plan: FormationPlan, group: range, column: int) -> str:
    """Return the checkpoint tag of one group and one column block."""
    return (
        f"ntk b={plan.block_samples} rows={group.start}-{group.stop - 1} col={column}"
    )


class _Clock:
    """Wall-clock phase timer that waits for the GPU before each reading."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.seconds = {"jacobian": 0.0, "gram": 0.0}

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        tic = self.now()
        yield
        self.seconds[name] += self.now() - tic


def form_gram(
    model: nn.Module,
    inputs: np.ndarray,
    plan: FormationPlan,
    cost: ArchitectureCost,
    out: BlockWriter,
    normalize: bool,
    dtype: str = "float64",
) -> FormationCounts:
    """Write ``K = J J^T`` (divided by P when ``normalize``) into ``out``.

    Parameters
    ----------
    model
        Network in eval mode, with parameters of the formation dtype on the
        formation device.
    inputs
        float64 samples, shape ``(plan.samples, channels, height, width)``.
    plan
        Block plan. For each group of row blocks and each column block j at or
        after the group, one matrix product gives the blocks ``J_i J_j^T``
        for the group's blocks i <= j. They are written with their
        transposes, and diagonal blocks are symmetrised, so the matrix written
        is exactly symmetric.
    cost
        Network size, for the FLOP counts of the phases.
    out
        Destination of the float64 blocks. Each finished step is recorded with
        ``out.mark_done``, and steps for which ``out.is_done`` is true are
        skipped, so a killed formation resumes where it stopped.
    normalize
        Divide by the parameter count P (in float64, after the product).
    dtype
        Formation dtype of the Jacobian and of the products: a key of
        :data:`TORCH_DTYPES`. The products are converted to float64.

    Returns
    -------
    FormationCounts
        Steps skipped and work done by this call.
    """
    device = next(model.parameters()).device
    torch_dtype = TORCH_DTYPES[dtype]
    with tf32_matmul(dtype == "tf32"):
        return _form(model, inputs, plan, cost, out, normalize, device, torch_dtype)


def _form(
    model: nn.Module,
    inputs: np.ndarray,
    plan: FormationPlan,
    cost: ArchitectureCost,
    out: BlockWriter,
    normalize: bool,
    device: torch.device,
    dtype: torch.dtype,
) -> FormationCounts:
    x = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float64))
    x = x.to(device=device, dtype=dtype)
    jacobian = jacobian_function(model)
    blocks = plan.blocks
    d = plan.outputs
    scale = 1.0 / plan.parameters if normalize else 1.0
    clock = _Clock(device)
    counts = FormationCounts()

    def rows_of(first: int, stop: int) -> int:
        """Rows of J from the start of block ``first`` to the end of ``stop - 1``."""
        return (blocks[stop - 1][1] - blocks[first][0]) * d

    def compute(first: int, stop: int, rows: torch.Tensor) -> None:
        """Fill ``rows`` with the Jacobian of blocks ``first`` to ``stop - 1``."""
        start, end = blocks[first][0], blocks[stop - 1][1]
        with clock.phase("jacobian"):
            jacobian(x[start:end], plan.chunk_samples, rows)
        counts.jacobian_samples += end - start

    steps = [
        (group, j) for group in plan.groups() for j in range(group.start, len(blocks))
    ]
    done = {step for step in steps if out.is_done(step_tag(plan, *step))}
    counts.steps = len(steps)
    counts.steps_skipped = len(done)
    logger.info(
        "forming NTK of order %d: %d Jacobian blocks of %d samples, %d groups, "
        "%d steps (%d done before)",
        plan.samples * d,
        len(blocks),
        plan.block_samples,
        len(plan.groups()),
        len(steps),
        len(done),
    )
    pairs_done = sum(_pairs(group, j) for group, j in done)
    # disable=None turns the bar off when stderr is not a terminal.
    progress = tqdm(
        total=plan.pairs,
        initial=pairs_done,
        desc="ntk blocks",
        unit="block",
        leave=False,
        file=sys.stderr,
        disable=None,
    )
    with progress:
        for group in plan.groups():
            pending = [
                j for j in range(group.start, len(blocks)) if (group, j) not in done
            ]
            if not pending:
                continue
            held = torch.empty(
                rows_of(group.start, group.stop),
                plan.parameters,
                dtype=dtype,
                device=device,
            )
            compute(group.start, group.stop, held)
            for j in pending:
                if j < group.stop:
                    offset = (blocks[j][0] - blocks[group.start][0]) * d
                    left = held[: rows_of(group.start, j + 1)]
                    right = held[offset : rows_of(group.start, j + 1)]
                else:
                    left = held
                    right = torch.empty(
                        rows_of(j, j + 1), plan.parameters, dtype=dtype, device=device
                    )
                    compute(j, j + 1, right)
                with clock.phase("gram"):
                    product = _gram_product(left, right)
                    product = product.to(dtype=torch.float64)
                    product *= scale
                    if j < group.stop:
                        # The last rows are the diagonal block J_j J_j^T.
                        width = right.shape[0]
                        square = product[-width:]
                        product[-width:] = (square + square.T) / 2
                    strip = product.cpu().numpy()
                counts.gram_flops += (
                    2.0 * left.shape[0] * strip.shape[1] * plan.parameters
                )
                # Views of the held rows keep them alive, so drop every name
                # before the next group allocates its own.
                del left, right, product
                row, col = blocks[group.start][0] * d, blocks[j][0] * d
                out.write(row, col, strip)
                if row != col:
                    out.write(col, row, strip.T)
                out.mark_done(step_tag(plan, group, j))
                pairs = _pairs(group, j)
                counts.pairs_computed += pairs
                progress.update(pairs)
            del held
    out.add_phase(
        "jacobian",
        clock.seconds["jacobian"],
        2.0 * cost.forward_macs * (1 + 2 * d) * counts.jacobian_samples,
    )
    out.add_phase("gram", clock.seconds["gram"], counts.gram_flops)
    return counts


def _pairs(group: range, column: int) -> int:
    """Return the number of Gram blocks (i, column) with i in ``group``, i <= column."""
    return min(group.stop, column + 1) - group.start


def _gram_product(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Return ``left @ right.T`` as one matrix product.

    bfloat16 blocks are multiplied in float32. The product of two bfloat16
    values is exact in float32, so only the float32 accumulation rounds. A
    bfloat16 ``torch.mm`` also rounds its output to bfloat16, a relative
    error of about 2e-3 (torch 2.13 on the CPU). The rounding of the
    Jacobian itself, computed by the network in bfloat16, stays.
    """
    if left.dtype == torch.bfloat16:
        left, right = left.float(), right.float()
    return torch.mm(left, right.T)
