"""Per-sample Jacobians and their Gram blocks, with torch.func.

This module imports torch at the top, so import it only when a matrix is
formed.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap
from tqdm.auto import tqdm

from ldbench import BlockWriter

from ._arch import ArchitectureCost
from ._plan import FormationPlan

logger = logging.getLogger(__name__)


def jacobian_function(model: nn.Module) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """Return a function that computes the Jacobian rows of a batch of samples.

    The returned ``jacobian(inputs, chunk)`` takes float64 inputs of shape
    ``(b, channels, height, width)`` and returns J of shape ``(b * d, P)``:
    row ``s * d + c`` is the gradient of output c of sample s with respect to
    all parameters, in the order of ``model.named_parameters()``. It calls
    the vectorised Jacobian on ``chunk`` samples at a time to bound the work
    space.
    """
    names = [name for name, _ in model.named_parameters()]
    params = {name: p.detach() for name, p in model.named_parameters()}
    buffers = {name: b.detach() for name, b in model.named_buffers()}
    sizes = [params[name].numel() for name in names]
    total = sum(sizes)

    def output(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        # The model sees a batch of one, so each sample's outputs depend on
        # that sample only.
        return functional_call(model, (p, buffers), (x.unsqueeze(0),)).squeeze(0)

    per_sample = vmap(jacrev(output), in_dims=(None, 0))

    def jacobian(inputs: torch.Tensor, chunk: int) -> torch.Tensor:
        count = inputs.shape[0]
        rows = None
        for start in range(0, count, chunk):
            stop = min(start + chunk, count)
            with torch.no_grad():
                parts = per_sample(params, inputs[start:stop])
            if rows is None:
                outputs = parts[names[0]].shape[1]
                rows = torch.empty(count * outputs, total, dtype=inputs.dtype)
            column = 0
            for name, size in zip(names, sizes):
                part = parts[name].reshape((stop - start) * outputs, size)
                rows[start * outputs : stop * outputs, column : column + size] = part
                column += size
            del parts
        assert rows is not None
        return rows

    return jacobian


def form_gram(
    model: nn.Module,
    inputs: np.ndarray,
    plan: FormationPlan,
    cost: ArchitectureCost,
    out: BlockWriter,
    normalize: bool,
) -> None:
    """Write ``K = J J^T`` (divided by P when ``normalize``) into ``out``.

    Parameters
    ----------
    model
        Network in eval mode with float64 parameters.
    inputs
        float64 samples, shape ``(plan.samples, channels, height, width)``.
    plan
        Block plan. Blocks ``J_i J_j^T`` are formed for i <= j and written
        with their transposes. Diagonal blocks are symmetrised, so the
        matrix written is exactly symmetric.
    cost
        Network size, for the FLOP counts of the phases.
    out
        Destination of the float64 blocks.
    normalize
        Divide by the parameter count P.
    """
    x = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float64))
    jacobian = jacobian_function(model)
    blocks = plan.blocks
    d = plan.outputs
    scale = 1.0 / plan.parameters if normalize else 1.0
    seconds = {"jacobian": 0.0, "gram": 0.0}

    def jacobian_block(index: int) -> torch.Tensor:
        start, stop = blocks[index]
        tic = time.perf_counter()
        rows = jacobian(x[start:stop], plan.chunk_samples)
        seconds["jacobian"] += time.perf_counter() - tic
        return rows

    logger.info(
        "forming NTK of order %d: %d Jacobian blocks of %d samples, %d groups",
        plan.samples * d,
        len(blocks),
        plan.block_samples,
        len(plan.groups()),
    )
    # disable=None turns the bar off when stderr is not a terminal.
    progress = tqdm(
        total=plan.pairs,
        desc="ntk blocks",
        unit="block",
        leave=False,
        file=sys.stderr,
        disable=None,
    )
    with progress:
        for group in plan.groups():
            held = {i: jacobian_block(i) for i in group}
            for j in range(group.start, len(blocks)):
                right = held[j] if j in held else jacobian_block(j)
                for i in group:
                    if i > j:
                        continue
                    tic = time.perf_counter()
                    gram = held[i] @ right.T
                    gram *= scale
                    if i == j:
                        gram = (gram + gram.T) / 2
                    seconds["gram"] += time.perf_counter() - tic
                    block = gram.numpy()
                    out.write(blocks[i][0] * d, blocks[j][0] * d, block)
                    if i != j:
                        out.write(blocks[j][0] * d, blocks[i][0] * d, block.T)
                    progress.update(1)
                del right
            del held
    out.add_phase("jacobian", seconds["jacobian"], plan.jacobian_flops(cost))
    out.add_phase("gram", seconds["gram"], plan.gram_flops())
