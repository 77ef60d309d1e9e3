"""The ``ntk`` matrix source: neural tangent kernels of small networks."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, ClassVar

from ldbench import (
    BlockWriter,
    MatrixInfo,
    MatrixSource,
    Param,
    ParameterError,
    Structure,
)

from . import _data
from ._arch import DATASETS, DEFAULT_WIDTH, MODELS, ArchitectureCost, architecture_cost
from ._plan import FormationPlan, make_plan

logger = logging.getLogger(__name__)


#: Bytes per Jacobian entry of each formation dtype.
ELEMENT_BYTES = {"float64": 8, "float32": 4, "tf32": 4, "bfloat16": 2}


class NTKSource(MatrixSource):
    """Empirical neural tangent kernel of a network, at initialisation or
    after a short training run.

    For a network f with d outputs and P parameters, evaluated on n images,
    the matrix is ``K = J J^T / P`` (or ``J J^T`` with ``normalize=False``),
    where J is the (n*d) x P Jacobian of the outputs with respect to the
    parameters. Dividing by P is the same as scaling the network's outputs by
    ``1 / sqrt(P)``. Rows are sample-major: row ``s * d + c``
    belongs to output c of sample s. K is symmetric positive semi-definite,
    and positive definite when J has full row rank, which needs
    ``P >= n * d``. Dividing by P changes ``log det K`` by exactly
    ``-n * d * log(P)``.

    The n samples are the first n of a seeded permutation of the training
    set, so the leading block of order ``k * d`` is the kernel of the first k
    samples: forming it on its own gives the top-left block of the full
    matrix, and a smaller ``n`` with the same seed gives a leading block of a
    larger one.

    NOTE: the structure is declared SPD. With ``P < n * d``, or with repeated
    images in the sample, K is singular and a Cholesky factorisation fails.

    Parameters
    ----------
    model
        ``"mlp"`` (ReLU network on the flattened image), ``"cnn"`` (two 3x3
        convolutions, average pooling, linear head), ``"resnet9"`` (the
        DAWNBench CIFAR-10 ResNet9 layout), ``"resnet18"`` (CIFAR layout: 3x3
        stem, no max pooling) or ``"mobilenet"`` (six depthwise-separable
        blocks). The convolutional networks normalise each sample with
        ``GroupNorm(1, channels)`` in place of batch norm.
    width
        Width multiplier. MLP: units per hidden layer. CNN: channels of the
        first convolution, the second has ``2 * width``. ResNet9: channels of
        the prep layer, layers 1 to 3 have 2, 4 and 8 times as many (64 gives
        the original network). ResNet18: channels of the first stage, the
        others have 2, 4 and 8 times as many (64 gives the original).
        MobileNet: channels of the stem. Default: 128, 32, 16, 16 and 8.
    depth
        Number of hidden layers of the MLP (0 gives a linear model). The
        other models ignore it.
    dataset
        ``"digits"`` (8x8 scikit-learn digits, 1,797 images), ``"mnist"``
        (28x28, 60,000) or ``"cifar10"`` (32x32x3, 50,000). Each has d = 10.
    data_dir
        Folder with the MNIST or CIFAR-10 files. Empty means the
        ``LDBENCH_DATA`` environment variable, else ``./data``.
    n
        Number of samples, so the order of the matrix is ``m = n * d``.
    seed
        Seed of the network initialisation and of the sample permutation.
    balanced
        Order the samples so that every prefix has nearly equal class counts.
    normalize
        Divide ``J J^T`` by P.
    block_samples
        Samples per Jacobian block, or 0 to choose it from ``memory_mb``.
    memory_mb
        Budget of the Jacobian blocks, Gram blocks and Jacobian work space,
        in MiB (the data set and the network come on top). On CUDA it bounds
        the device memory of these arrays.
    dtype
        Formation dtype of the network, the Jacobian and the Gram products:
        ``"float64"``, ``"float32"``, ``"bfloat16"`` or ``"tf32"`` (float32
        with TensorFloat-32 matrix products on CUDA, plain float32 on the
        CPU). The network is initialised, loaded and trained in float64 and
        then rounded, so every dtype sees the same weights. The products are
        converted to float64 and stored as float64.
    device
        ``"cpu"``, ``"cuda"`` or ``"auto"`` (CUDA when torch finds a GPU).
        Forming on CUDA records the device ``"gpu"`` for pricing.
    weights
        Path of a state-dict file (``torch.save(model.state_dict())``) to load
        after the seeded initialisation; empty keeps the initialisation. The
        file's size and modification time are part of the store key.
    train_steps
        Steps of cross-entropy training on the data set before forming, 0 for
        none. Batches are seeded random draws from the whole training set.
    train_lr, train_batch, train_optimizer
        Learning rate, batch size and optimiser (``"sgd"`` with momentum 0.9,
        or ``"adam"``) of that training run.
    """

    name: ClassVar[str] = "ntk"
    version: ClassVar[str] = "1"
    #: Step and work counts of the last :meth:`form` call (a
    #: ``FormationCounts``), or None before the first.
    last_counts: Any = None
    requires: ClassVar[tuple[str, ...]] = ("torch",)
    parameters: ClassVar[dict[str, Param]] = {
        "model": Param("mlp", str, "network architecture", choices=MODELS),
        "width": Param(
            None,
            int,
            "hidden units (mlp) or channels of the first layer (cnn, resnet9); "
            "default 128, 32, 16",
            minimum=1,
        ),
        "depth": Param(2, int, "number of hidden layers of the mlp", minimum=0),
        "dataset": Param("digits", str, "training set", choices=tuple(DATASETS)),
        "data_dir": Param(
            "",
            str,
            "folder with the mnist or cifar10 files; empty: $LDBENCH_DATA or ./data",
        ),
        "n": Param(300, int, "number of samples; the order is n * 10", minimum=1),
        "seed": Param(
            0, int, "seed of the initialisation and the sample order", minimum=0
        ),
        "balanced": Param(False, bool, "order samples so prefixes are class-balanced"),
        "normalize": Param(True, bool, "divide J J^T by the parameter count P"),
        "block_samples": Param(
            0, int, "samples per Jacobian block; 0 chooses it from memory_mb", minimum=0
        ),
        "memory_mb": Param(
            1024.0, float, "memory budget of the blocks, in MiB", minimum=0.001
        ),
        "dtype": Param(
            "float64",
            str,
            "dtype of the network, Jacobian and Gram products; stored as float64",
            choices=tuple(ELEMENT_BYTES),
        ),
        "device": Param(
            "cpu", str, "torch device of the formation", choices=("cpu", "cuda", "auto")
        ),
        "weights": Param("", str, "state-dict file to load; empty keeps the init"),
        "train_steps": Param(
            0, int, "cross-entropy training steps before forming", minimum=0
        ),
        "train_lr": Param(0.01, float, "learning rate of the training run", minimum=0),
        "train_batch": Param(
            128, int, "samples per training step", minimum=1
        ),
        "train_optimizer": Param(
            "sgd", str, "optimiser of the training run", choices=("sgd", "adam")
        ),
    }

    def validate(self) -> None:
        """Fill in the model's default width and check n against the data set."""
        if self.params["device"] == "cuda":
            # An instance attribute shadows the class attribute the store
            # reads for pricing.
            self.device = "gpu"
        if self.params["width"] is None:
            self.params["width"] = DEFAULT_WIDTH[self.params["model"]]
        size = DATASETS[self.params["dataset"]].size
        n = self.params["n"]
        if n > size:
            raise ParameterError(
                f"source 'ntk': parameter 'n' = {n} exceeds the {size} training "
                f"images of {self.params['dataset']}; use n <= {size}"
            )
        cost = self.cost
        m = n * self.outputs
        if cost.parameters < m:
            logger.warning(
                "ntk: P = %d parameters < m = %d rows, so K is singular; "
                "raise width or lower n",
                cost.parameters,
                m,
            )

    # --- description ------------------------------------------------------

    @property
    def outputs(self) -> int:
        """Outputs per sample d (classes of the data set)."""
        return DATASETS[self.params["dataset"]].classes

    @property
    def cost(self) -> ArchitectureCost:
        """Parameter count and per-sample cost of the network."""
        p = self.params
        return architecture_cost(
            p["model"], p["width"], p["depth"], DATASETS[p["dataset"]]
        )

    def check_order(self, order: int) -> int:
        """Return the number of samples of the leading block of ``order``.

        Raises
        ------
        ParameterError
            When ``order`` is not a positive multiple of d up to ``n * d``.
        """
        d = self.outputs
        full = self.params["n"] * d
        if isinstance(order, bool) or not isinstance(order, int) or order <= 0:
            raise ParameterError(
                f"source 'ntk': order {order!r} must be a positive integer multiple of "
                f"the {d} outputs per sample"
            )
        if order % d:
            raise ParameterError(
                f"source 'ntk': order {order} is not a multiple of the {d} outputs per "
                f"sample; use a multiple of {d}, such as {max(d, order - order % d)}"
            )
        if order > full:
            raise ParameterError(
                f"source 'ntk': order {order} exceeds the matrix order m = {full} "
                f"(n = {self.params['n']} samples x {d} outputs)"
            )
        return order // d

    def describe(self, order: int | None = None) -> MatrixInfo:
        """Describe the matrix, or its leading block of ``order = k * d``.

        Needs neither torch nor the data files.
        """
        p = self.params
        order = p["n"] * self.outputs if order is None else order
        samples = self.check_order(order)
        model = p["model"] + (f" depth={p['depth']}" if p["model"] == "mlp" else "")
        if p["dtype"] != "float64":
            model += f" {p['dtype']}"
        if p["train_steps"]:
            model += f" trained={p['train_steps']}"
        return MatrixInfo(
            order=order,
            structure=Structure.SPD,
            block_size=self.outputs,
            description=(
                f"ntk {model} width={p['width']} {p['dataset']} n={samples} "
                f"m={order} P={self.cost.parameters}"
            ),
        )

    def plan(self, order: int) -> FormationPlan:
        """Return the block plan for forming the leading block of ``order``."""
        samples = self.check_order(order)
        return make_plan(
            samples,
            self.outputs,
            self.cost,
            self.params["memory_mb"],
            self.params["block_samples"],
            ELEMENT_BYTES[self.params["dtype"]],
        )

    def formation_flops(self, order: int) -> float:
        """Estimate the FLOPs of forming the leading block of ``order``.

        The sum of :meth:`FormationPlan.gram_flops`, exact for the products
        ``J_i J_j^T`` (about ``m^2 P`` for many blocks, ``2 m^2 P`` for one),
        and :meth:`FormationPlan.jacobian_flops`, an estimate of one forward
        and d backward passes per sample and per Jacobian evaluation.
        Multiply-add = 2.
        """
        plan = self.plan(order)
        return plan.gram_flops() + plan.jacobian_flops(self.cost)

    # --- data -------------------------------------------------------------

    def check_available(self) -> None:
        """Raise FileNotFoundError when the MNIST or CIFAR-10 files are missing,
        or ParameterError when n exceeds the images in the files."""
        p = self.params
        if p["weights"] and not Path(p["weights"]).expanduser().is_file():
            raise FileNotFoundError(
                f"source 'ntk': weights file {p['weights']!r} not found; give the "
                "path of a file written by torch.save(model.state_dict())"
            )
        _data.data_files(p["dataset"], p["data_dir"])
        available = _data.count_samples(p["dataset"], p["data_dir"])
        if p["n"] > available:
            raise ParameterError(
                f"source 'ntk': parameter 'n' = {p['n']} exceeds the {available} "
                f"images of {p['dataset']} found; use n <= {available}"
            )

    def fingerprint(self) -> str:
        """Return the names, sizes and modification times of the data files and
        of the weights file."""
        p = self.params
        try:
            paths = _data.data_files(p["dataset"], p["data_dir"])
        except FileNotFoundError:
            return "missing"
        if p["weights"]:
            weights = Path(p["weights"]).expanduser()
            if not weights.is_file():
                return "missing"
            paths.append(weights)
        parts = []
        for path in paths:
            stat = path.stat()
            parts.append(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}")
        return ";".join(parts)

    def load_inputs(self, samples: int | None = None) -> tuple[Any, Any]:
        """Return the first ``samples`` (default n) inputs and labels.

        Returns
        -------
        inputs : numpy.ndarray
            float64, shape ``(samples, channels, height, width)``, normalised
            per channel.
        labels : numpy.ndarray
            int64, shape ``(samples,)``.
        """
        p = self.params
        samples = p["n"] if samples is None else samples
        data = _data.load_dataset(p["dataset"], p["data_dir"])
        if samples > data.labels.size:
            raise ParameterError(
                f"source 'ntk': parameter 'n' = {samples} exceeds the "
                f"{data.labels.size} images of {p['dataset']} found; use n <= "
                f"{data.labels.size}"
            )
        return _data.select_samples(data, samples, p["seed"], p["balanced"])

    def build_model(self) -> Any:
        """Return the float64 torch network on the CPU (imports torch).

        The network is seeded, then loaded from ``weights`` and trained for
        ``train_steps`` when these are set, on the formation device.
        """
        from ._models import build_model

        p = self.params
        model = build_model(
            p["model"], p["width"], p["depth"], DATASETS[p["dataset"]], p["seed"]
        )
        if p["weights"]:
            from ._train import load_weights

            load_weights(model, Path(p["weights"]).expanduser())
        if p["train_steps"]:
            from ._train import TrainingSettings, train

            data = _data.load_dataset(p["dataset"], p["data_dir"])
            settings = TrainingSettings(
                steps=p["train_steps"],
                lr=p["train_lr"],
                batch=p["train_batch"],
                optimizer=p["train_optimizer"],
                seed=p["seed"],
            )
            train(model, data, settings, self.torch_device())
        return model

    def torch_device(self) -> Any:
        """Return the torch device of the formation and set :attr:`device`.

        Raises
        ------
        ParameterError
            When ``device = "cuda"`` and torch finds no CUDA device.
        """
        import torch

        choice = self.params["device"]
        available = torch.cuda.is_available()
        if choice == "cuda" and not available:
            raise ParameterError(
                "source 'ntk': device = 'cuda' but torch finds no CUDA device "
                f"(torch {torch.__version__}); use device = 'cpu' or 'auto'"
            )
        use_cuda = choice == "cuda" or (choice == "auto" and available)
        self.device = "gpu" if use_cuda else "cpu"
        return torch.device("cuda" if use_cuda else "cpu")

    # --- formation --------------------------------------------------------

    def form(self, order: int, out: BlockWriter) -> None:
        """Write the leading block of ``order = k * d`` into ``out``.

        Computes the Jacobian of the first k samples in blocks with
        ``torch.func`` in the formation dtype and device, and writes each Gram
        block ``J_i J_j^T`` (i <= j) and its transpose as float64. Each
        finished group and column block is checkpointed through
        ``out.mark_done``, so a killed formation resumes after its last
        finished step. Adds the phases ``"jacobian"`` and ``"gram"`` (seconds
        and FLOPs of this call) to ``out``, and keeps the step and work counts
        of the call in :attr:`last_counts`.
        """
        plan = self.plan(order)
        self.check_available()
        from ._kernel import TORCH_DTYPES, form_gram

        tic = time.perf_counter()
        device = self.torch_device()
        inputs, _ = self.load_inputs(plan.samples)
        model = self.build_model()
        model = model.to(device=device, dtype=TORCH_DTYPES[self.params["dtype"]])
        logger.info(
            "ntk: data and model ready on %s in %.2f s", device, time.perf_counter() - tic
        )
        self.last_counts = form_gram(
            model,
            inputs,
            plan,
            self.cost,
            out,
            self.params["normalize"],
            self.params["dtype"],
        )
