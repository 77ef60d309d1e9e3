"""Block plan of an NTK formation under a memory budget, without torch.

The Jacobian J (m x P, m = samples * outputs) is split into blocks of
``block_samples`` samples. The Gram blocks ``J_i J_j^T`` for i <= j are
formed group by group: a group of row blocks of J stays in memory as one
contiguous array while the column blocks at and after the group are computed
and multiplied with it, one matrix product per column block. When all blocks
fit in the budget there is one group and every Jacobian block is computed
once. Otherwise the blocks after a group are computed again for each group,
which trades Jacobian work for memory.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from ldbench import ParameterError

from ._arch import ArchitectureCost

logger = logging.getLogger(__name__)

MIB = 2**20
_FLOAT = 8  # bytes per float64
#: Share of the budget that one Jacobian block takes when ``block_samples`` is
#: 0. The group then holds about four blocks, so each matrix product is at
#: least four times as tall as it is wide.
BLOCK_SHARE = 6


def jacobian_work_bytes(
    outputs: int, cost: ArchitectureCost, element_bytes: int = _FLOAT
) -> int:
    """Estimate the work space of one per-sample Jacobian, in bytes.

    The per-parameter Jacobian (outputs x P) plus the forward activations and
    the activation gradients of the ``outputs`` backward passes, counted
    twice for saved tensors and temporaries.
    """
    # NOTE: an estimate from the activation count of _arch, not a measurement.
    floats = outputs * cost.parameters + 2 * (outputs + 1) * cost.activations
    return element_bytes * floats


@dataclass(frozen=True)
class FormationPlan:
    """Blocks, groups and memory of one formation.

    Attributes
    ----------
    samples
        Number of samples k of the leading block (order ``k * outputs``).
    outputs
        Outputs per sample d.
    parameters
        Number of network parameters P.
    block_samples
        Samples per Jacobian block (the last block may be smaller).
    chunk_samples
        Samples per call of the vectorised Jacobian inside a block.
    cache_blocks
        Jacobian blocks held in memory at once (one group plus one streamed
        block, or every block when they all fit).
    work_bytes
        Estimated work space of the Jacobian of one sample, in bytes.
    element_bytes
        Bytes per entry of the Jacobian: 8 for float64, 4 for float32, 2 for
        bfloat16.
    """

    samples: int
    outputs: int
    parameters: int
    block_samples: int
    chunk_samples: int
    cache_blocks: int
    work_bytes: int
    element_bytes: int = _FLOAT

    @property
    def blocks(self) -> list[tuple[int, int]]:
        """Sample ranges ``(start, stop)`` of the Jacobian blocks."""
        b = self.block_samples
        return [(s, min(s + b, self.samples)) for s in range(0, self.samples, b)]

    @property
    def group_blocks(self) -> int:
        """Row blocks per group."""
        count = len(self.blocks)
        return count if self.cache_blocks >= count else self.cache_blocks - 1

    def groups(self) -> list[range]:
        """Block indices of each group, in formation order."""
        count, size = len(self.blocks), self.group_blocks
        return [range(g, min(g + size, count)) for g in range(0, count, size)]

    @property
    def pairs(self) -> int:
        """Number of Gram blocks ``J_i J_j^T`` with i <= j."""
        count = len(self.blocks)
        return count * (count + 1) // 2

    def jacobian_samples(self) -> int:
        """Samples whose Jacobian is computed, recomputations included."""
        blocks = self.blocks
        total = 0
        for group in self.groups():
            total += sum(blocks[i][1] - blocks[i][0] for i in group)
            total += sum(stop - start for start, stop in blocks[group.stop :])
        return total

    def gram_flops(self) -> float:
        """FLOPs of the products ``J_i J_j^T`` over i <= j (multiply-add = 2).

        Diagonal blocks are full matrix products too, so this is
        ``P * m * (m + r)`` for equal blocks of r rows: ``2 m^2 P`` for one
        block, approaching ``m^2 P`` for many.
        """
        rows = [(stop - start) * self.outputs for start, stop in self.blocks]
        total = 0
        for i, rows_i in enumerate(rows):
            total += rows_i * sum(rows[i:])
        return 2.0 * self.parameters * total

    def jacobian_flops(self, cost: ArchitectureCost) -> float:
        """Estimated FLOPs of the per-sample Jacobians (multiply-add = 2).

        One forward pass (``2 * forward_macs``) and ``outputs`` backward passes
        (twice a forward each, for the input and the weight gradients) per
        sample, times :meth:`jacobian_samples`.
        """
        per_sample = 2.0 * cost.forward_macs * (1 + 2 * self.outputs)
        return per_sample * self.jacobian_samples()

    def peak_bytes(self) -> int:
        """Estimated peak memory of the Jacobian and Gram blocks, in bytes."""
        held = min(self.cache_blocks, len(self.blocks))
        block = self.block_samples * self.outputs * self.parameters
        block *= self.element_bytes
        gram = 2 * self.group_blocks * (self.block_samples * self.outputs) ** 2 * _FLOAT
        return held * block + gram + self.chunk_samples * self.work_bytes


def make_plan(
    samples: int,
    outputs: int,
    cost: ArchitectureCost,
    memory_mb: float,
    block_samples: int = 0,
    element_bytes: int = _FLOAT,
) -> FormationPlan:
    """Choose block and chunk sizes that fit ``memory_mb`` MiB.

    Parameters
    ----------
    samples
        Number of samples k of the block to form.
    outputs
        Outputs per sample d.
    cost
        Size of the network.
    memory_mb
        Budget for the Jacobian blocks, the Gram blocks and the Jacobian work
        space, in MiB. The data set and the network are not counted.
    block_samples
        Samples per Jacobian block, or 0 to use a sixth of the budget
        (:data:`BLOCK_SHARE`) per block.
    element_bytes
        Bytes per Jacobian entry in the formation dtype.

    Raises
    ------
    ParameterError
        When two Jacobian blocks (one for a single block) and their work space
        do not fit the budget. The message gives the budget needed.
    """
    budget = memory_mb * MIB
    sample_bytes = element_bytes * outputs * cost.parameters
    work = jacobian_work_bytes(outputs, cost, element_bytes)
    # A held block also adds its rows to the float64 product with a column
    # block, counted twice for the product and its symmetrised copy.
    gram_per_sample = 2 * _FLOAT * outputs
    if block_samples > 0:
        b = min(block_samples, samples)
    else:
        b = max(1, min(samples, _largest_block(budget / BLOCK_SHARE, sample_bytes,
                                               gram_per_sample * outputs)))
    chunk = max(1, min(b, int(budget / 8 // work)))
    chunk = math.ceil(b / math.ceil(b / chunk))  # equal chunks, none smaller
    block_bytes = b * sample_bytes + gram_per_sample * outputs * b * b
    count = math.ceil(samples / b)
    capacity = int((budget - chunk * work) // block_bytes)
    needed = min(count, 2)
    if capacity < needed:
        need_mb = (needed * block_bytes + chunk * work) / MIB
        setting = f"block_samples = {block_samples}" if block_samples else "blocks"
        raise ParameterError(
            f"source 'ntk': memory_mb = {memory_mb:g} is too small for {setting} of "
            f"{b} samples with P = {cost.parameters} parameters; it needs at least "
            f"{math.ceil(need_mb)} MiB. Raise memory_mb, or lower block_samples."
        )
    plan = FormationPlan(
        samples=samples,
        outputs=outputs,
        parameters=cost.parameters,
        block_samples=b,
        chunk_samples=chunk,
        cache_blocks=min(capacity, count),
        work_bytes=work,
        element_bytes=element_bytes,
    )
    logger.debug(
        "ntk plan: %d blocks of %d samples, %d groups, %d Jacobian samples",
        count,
        b,
        len(plan.groups()),
        plan.jacobian_samples(),
    )
    return plan


def _largest_block(budget: float, linear: float, quadratic: float) -> int:
    """Return the largest b with ``linear * b + quadratic * b**2 <= budget``."""
    root = (-linear + math.sqrt(linear * linear + 4.0 * quadratic * budget)) / (
        2.0 * quadratic
    )
    return int(root)
