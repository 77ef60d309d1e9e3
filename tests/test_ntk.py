"""Tests of the ``ntk`` source: kernel values, blocking, data readers, errors."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import ldbench_ntk
import numpy as np
import pytest
from conftest import ArrayWriter, form_dense
from ldbench_ntk import NTKSource, _data
from ldbench_ntk._arch import DATASETS

from ldbench import ParameterError, Structure

torch = pytest.importorskip("torch")

D = 10  # outputs of every data set

TINY = {
    "mlp": {"model": "mlp", "width": 8, "depth": 1},
    "cnn": {"model": "cnn", "width": 3},
    "resnet9": {"model": "resnet9", "width": 2},
    "resnet18": {"model": "resnet18", "width": 2},
    "mobilenet": {"model": "mobilenet", "width": 2},
}


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def explicit_ntk(source: NTKSource, normalize: bool) -> np.ndarray:
    """Build J row by row with one backward pass per output, then J J^T."""
    model = source.build_model()
    params = list(model.parameters())
    inputs, _ = source.load_inputs()
    rows = []
    for x in inputs:
        out = model(torch.from_numpy(x[None]))[0]
        for c in range(out.shape[0]):
            grads = torch.autograd.grad(out[c], params, retain_graph=True)
            rows.append(torch.cat([g.reshape(-1) for g in grads]))
    jac = torch.stack(rows).detach().numpy()
    kernel = jac @ jac.T
    return kernel / jac.shape[1] if normalize else kernel


# --- kernel values -----------------------------------------------------------


@pytest.mark.parametrize("model", sorted(TINY))
def test_ntk_matches_explicit_jacobian(model: str) -> None:
    source = NTKSource(**TINY[model], n=4, seed=3)
    expected = explicit_ntk(source, normalize=True)
    actual = form_dense(source)
    assert actual.shape == (4 * D, 4 * D)
    assert relative_error(actual, expected) < 1e-12


def test_ntk_unnormalized_is_p_times_normalized() -> None:
    plain = NTKSource(**TINY["mlp"], n=3, normalize=False)
    scaled = NTKSource(**TINY["mlp"], n=3, normalize=True)
    parameters = plain.cost.parameters
    assert (
        relative_error(form_dense(plain), explicit_ntk(plain, normalize=False)) < 1e-12
    )
    assert relative_error(form_dense(scaled) * parameters, form_dense(plain)) < 1e-12


@pytest.mark.parametrize("model", sorted(TINY))
def test_ntk_symmetric_psd(model: str) -> None:
    kernel = form_dense(NTKSource(**TINY[model], n=5))
    eigenvalues = np.linalg.eigvalsh(kernel)
    assert np.array_equal(kernel, kernel.T)
    assert eigenvalues.min() > -1e-12 * eigenvalues.max()


def test_ntk_spd_when_p_exceeds_m() -> None:
    source = NTKSource(model="mlp", width=16, depth=1, n=6)
    assert source.cost.parameters >= 60
    kernel = form_dense(source)
    np.linalg.cholesky(kernel)  # raises LinAlgError unless positive definite


def test_blockwise_equals_one_block() -> None:
    params = dict(TINY["resnet9"], n=7)
    whole = form_dense(NTKSource(**params, block_samples=7))
    for block_samples in (1, 2, 3):
        blocked = form_dense(NTKSource(**params, block_samples=block_samples))
        assert relative_error(blocked, whole) < 1e-12, block_samples


def test_recomputing_groups_equal_cached() -> None:
    params = dict(TINY["mlp"], n=9, block_samples=2)
    cached = NTKSource(**params)
    # Room for four blocks of two samples (97,600 bytes each at P = 610) next to
    # the work space, so the five blocks are formed in two groups of three and two.
    tight = NTKSource(**params, memory_mb=0.45)
    plan = tight.plan(90)
    assert [list(g) for g in plan.groups()] == [[0, 1, 2], [3, 4]]
    assert plan.jacobian_samples() == 9 + 3
    assert len(cached.plan(90).groups()) == 1
    assert relative_error(form_dense(tight), form_dense(cached)) < 1e-12


def test_leading_block_is_top_left() -> None:
    source = NTKSource(**TINY["cnn"], n=6, block_samples=4)
    full = form_dense(source)
    for samples in (1, 3, 5):
        leading = form_dense(source, order=samples * D)
        top_left = full[: samples * D, : samples * D]
        assert relative_error(leading, top_left) < 1e-12, samples


def test_smaller_n_is_leading_block() -> None:
    large = form_dense(NTKSource(**TINY["mlp"], n=6, balanced=True))
    small = form_dense(NTKSource(**TINY["mlp"], n=4, balanced=True))
    assert relative_error(small, large[:40, :40]) < 1e-12


def test_seed_changes_matrix() -> None:
    first = form_dense(NTKSource(**TINY["mlp"], n=2, seed=0))
    second = form_dense(NTKSource(**TINY["mlp"], n=2, seed=1))
    assert not np.allclose(first, second)


def test_form_reports_phases() -> None:
    source = NTKSource(**TINY["mlp"], n=5, block_samples=2)
    writer = ArrayWriter(50)
    source.form(50, writer)
    plan = source.plan(50)
    assert set(writer.phases) == {"jacobian", "gram"}
    assert writer.phases["gram"]["flops"] == plan.gram_flops()
    assert writer.phases["jacobian"]["flops"] == plan.jacobian_flops(source.cost)
    assert writer.phases["gram"]["seconds"] > 0
    assert source.formation_flops(50) == plan.gram_flops() + plan.jacobian_flops(
        source.cost
    )


def test_gram_flops_formula() -> None:
    source = NTKSource(**TINY["mlp"], n=6, block_samples=3)
    parameters = source.cost.parameters
    # Blocks of 30 rows: pairs (0, 0), (0, 1), (1, 1), each 2 * 30 * 30 * P.
    assert source.plan(60).gram_flops() == 3 * 2 * 30 * 30 * parameters
    one_block = NTKSource(**TINY["mlp"], n=6, block_samples=6)
    assert one_block.plan(60).gram_flops() == 2 * 60 * 60 * parameters


# --- description and parameters ------------------------------------------------


@pytest.mark.parametrize("dataset", sorted(DATASETS))
@pytest.mark.parametrize(
    "params",
    [
        {"model": "mlp", "width": 7, "depth": 0},
        {"model": "mlp", "width": 5, "depth": 3},
        {"model": "cnn", "width": 3},
        {"model": "resnet9", "width": 2},
        {"model": "resnet18", "width": 3},
        {"model": "mobilenet", "width": 3},
    ],
    ids=["linear", "mlp3", "cnn", "resnet9", "resnet18", "mobilenet"],
)
def test_parameter_count_matches_torch(dataset: str, params: dict) -> None:
    source = NTKSource(**params, dataset=dataset, n=1)
    model = source.build_model()
    assert source.cost.parameters == sum(p.numel() for p in model.parameters())
    shape = DATASETS[dataset]
    x = torch.zeros(2, shape.channels, shape.height, shape.width, dtype=torch.float64)
    assert model(x).shape == (2, D)


def test_resnet9_width64_matches_torch() -> None:
    source = NTKSource(model="resnet9", width=64, dataset="cifar10", n=1)
    model = source.build_model()
    assert source.cost.parameters == sum(p.numel() for p in model.parameters())
    assert model.head.in_features == 512


def test_resnet18_width64_matches_torch() -> None:
    source = NTKSource(model="resnet18", width=64, dataset="cifar10", n=1)
    model = source.build_model()
    assert source.cost.parameters == 11_173_962
    assert source.cost.parameters == sum(p.numel() for p in model.parameters())


def test_mobilenet_is_depthwise() -> None:
    model = NTKSource(model="mobilenet", width=4, n=1).build_model()
    depthwise = [
        m
        for m in model.modules()
        if isinstance(m, torch.nn.Conv2d) and m.groups == m.in_channels > 1
    ]
    assert len(depthwise) == 6


def test_describe() -> None:
    source = NTKSource(**TINY["mlp"], n=6)
    info = source.describe()
    assert info.order == 60
    assert info.block_size == D
    assert info.structure is Structure.SPD
    assert info.samples == 6
    leading = source.describe(order=20)
    assert leading.order == 20
    assert leading.samples == 2
    assert "P=610" in info.description


def test_default_width_per_model() -> None:
    assert NTKSource(model="mlp").params["width"] == 128
    assert NTKSource(model="cnn").params["width"] == 32
    assert NTKSource(model="resnet9").params["width"] == 16
    assert NTKSource(model="resnet18").params["width"] == 16
    assert NTKSource(model="mobilenet").params["width"] == 8


# --- weights and training ------------------------------------------------------


def save_scaled_weights(source: NTKSource, path: Path, factor: float) -> None:
    model = source.build_model()
    state = {name: value * factor for name, value in model.state_dict().items()}
    torch.save(state, path)


def test_weights_file_loaded(tmp_path: Path) -> None:
    plain = NTKSource(**TINY["mlp"], n=4)
    same_path = tmp_path / "same.pt"
    save_scaled_weights(plain, same_path, 1.0)
    same = NTKSource(**TINY["mlp"], n=4, weights=str(same_path))
    assert np.array_equal(form_dense(same), form_dense(plain))

    scaled_path = tmp_path / "scaled.pt"
    save_scaled_weights(plain, scaled_path, 1.5)
    scaled = NTKSource(**TINY["mlp"], n=4, weights=str(scaled_path))
    kernel = form_dense(scaled)
    assert relative_error(kernel, explicit_ntk(scaled, normalize=True)) < 1e-12
    assert not np.allclose(kernel, form_dense(plain))


def test_weights_fingerprint_tracks_file(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    source = NTKSource(**TINY["mlp"], n=2, weights=str(path))
    assert source.fingerprint() == "missing"
    with pytest.raises(FileNotFoundError, match="weights file"):
        source.check_available()
    initial = NTKSource(**TINY["mlp"], n=2)
    save_scaled_weights(initial, path, 1.0)
    first = source.fingerprint()
    assert "w.pt" in first
    save_scaled_weights(initial, path, 2.0)
    os.utime(path, ns=(1, 1))
    assert source.fingerprint() != first


def test_weights_wrong_network(tmp_path: Path) -> None:
    path = tmp_path / "cnn.pt"
    save_scaled_weights(NTKSource(**TINY["cnn"], n=1), path, 1.0)
    source = NTKSource(**TINY["mlp"], n=2, weights=str(path))
    with pytest.raises(ValueError, match="does not fit the network"):
        source.build_model()


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_training_lowers_loss_and_is_seeded(optimizer: str) -> None:
    from ldbench_ntk._train import TrainingSettings, train

    data = _data.load_dataset("digits", "")
    settings = TrainingSettings(steps=30, lr=0.01, batch=64, optimizer=optimizer, seed=0)
    model = NTKSource(**TINY["mlp"]).build_model()
    losses = train(model, data, settings, torch.device("cpu"))
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    params = dict(TINY["mlp"], n=3, train_steps=5, train_optimizer=optimizer)
    first = form_dense(NTKSource(**params))
    assert np.array_equal(first, form_dense(NTKSource(**params)))
    assert not np.allclose(first, form_dense(NTKSource(**TINY["mlp"], n=3)))


def test_import_needs_no_torch() -> None:
    code = (
        "import sys, ldbench_ntk\n"
        "s = ldbench_ntk.NTKSource(n=300)\n"
        "s.describe(); s.describe(order=100); s.formation_flops(3000)\n"
        "print('torch' in sys.modules, 'sklearn' in sys.modules)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert result.stdout.split() == ["False", "False"]


def test_plugin_registers_ntk() -> None:
    from ldbench._plugins import Registry

    registry = Registry(autoload=False, extra_plugins={"ntk": ldbench_ntk}, strict=True)
    assert registry.source_class("ntk") is NTKSource


@pytest.mark.parametrize("order", [15, 65, 7])
def test_order_not_multiple_of_d(order: int) -> None:
    source = NTKSource(**TINY["mlp"], n=6)
    with pytest.raises(ParameterError, match=f"order {order} is not a multiple"):
        source.form(order, ArrayWriter(order))
    with pytest.raises(ParameterError, match=f"order {order} is not a multiple"):
        source.describe(order=order)


def test_order_too_large() -> None:
    source = NTKSource(**TINY["mlp"], n=6)
    with pytest.raises(
        ParameterError, match="order 70 exceeds the matrix order m = 60"
    ):
        source.describe(order=70)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"model": "vgg"}, "'vgg' is not one of"),
        ({"dataset": "svhn"}, "'svhn' is not one of"),
        ({"width": 0}, "'width' = 0 is below the minimum"),
        ({"n": 1798}, "'n' = 1798 exceeds the 1797 training images"),
        ({"n": 60001, "dataset": "mnist"}, "'n' = 60001 exceeds the 60000"),
        ({"widht": 3}, "did you mean 'width'"),
        ({"normalize": 1}, "'normalize' must be of type bool"),
    ],
)
def test_bad_parameters(params: dict, message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        NTKSource(**params)


def test_memory_budget_too_small() -> None:
    source = NTKSource(model="mlp", width=128, n=10, memory_mb=0.5)
    with pytest.raises(ParameterError, match=r"memory_mb = 0.5 is too small.*needs at"):
        source.form(100, ArrayWriter(100))


def test_balanced_prefix_has_every_class() -> None:
    _, labels = NTKSource(n=30, balanced=True, seed=5).load_inputs()
    for cycle in range(3):
        assert sorted(labels[cycle * D : (cycle + 1) * D]) == list(range(D))


def test_sample_order_seeded_permutation() -> None:
    labels = np.arange(100) % 10
    first = _data.sample_order(labels, seed=4, balanced=False)
    assert np.array_equal(np.sort(first), np.arange(100))
    assert np.array_equal(first, _data.sample_order(labels, seed=4, balanced=False))
    assert not np.array_equal(first, _data.sample_order(labels, seed=5, balanced=False))
    assert not np.array_equal(first, np.arange(100))


def test_inputs_normalized_per_channel() -> None:
    data = _data.load_dataset("digits", "")
    inputs, _ = _data.select_samples(data, data.labels.size, seed=0, balanced=False)
    assert abs(inputs.mean()) < 1e-12
    assert abs(inputs.std() - 1.0) < 1e-12


# --- MNIST and CIFAR-10 files ----------------------------------------------------


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if compress:
        with gzip.open(path, "wb") as stream:
            stream.write(payload)
    else:
        path.write_bytes(payload)


def make_mnist(folder: Path, count: int = 12, compress: bool = False, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
    labels = np.arange(count, dtype=np.uint8) % 10
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    write_idx(folder / f"train-images-idx3-ubyte{suffix}", images, compress)
    write_idx(folder / f"train-labels-idx1-ubyte{suffix}", labels, compress)
    return images, labels


def make_cifar(folder: Path, binary: bool, per_batch: int = 3, protocol: int = 2):
    """Write five CIFAR-10 training batches; return all images and labels."""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(5 * per_batch, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, size=5 * per_batch)
    name = "cifar-10-batches-bin" if binary else "cifar-10-batches-py"
    (folder / name).mkdir(parents=True, exist_ok=True)
    for b in range(5):
        part = slice(b * per_batch, (b + 1) * per_batch)
        flat = images[part].reshape(per_batch, 3072)
        if binary:
            records = np.concatenate(
                [labels[part, None].astype(np.uint8), flat], axis=1
            )
            records.tofile(folder / name / f"data_batch_{b + 1}.bin")
        else:
            batch = {
                b"batch_label": f"training batch {b + 1} of 5".encode(),
                b"labels": [int(v) for v in labels[part]],
                b"data": flat,
                b"filenames": [f"img_{i}.png".encode() for i in range(per_batch)],
            }
            with open(folder / name / f"data_batch_{b + 1}", "wb") as stream:
                pickle.dump(batch, stream, protocol=protocol)
    return images, labels


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_idx_read(tmp_path: Path, compress: bool) -> None:
    images, labels = make_mnist(tmp_path, compress=compress)
    paths = _data.data_files("mnist", str(tmp_path))
    read_images, read_labels = _data.read_mnist(*paths)
    assert read_images.shape == (12, 1, 28, 28)
    assert np.array_equal(read_images[:, 0], images)
    assert np.array_equal(read_labels, labels)
    assert _data.count_samples("mnist", str(tmp_path)) == 12


def test_mnist_source_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images, labels = make_mnist(tmp_path / "MNIST" / "raw")
    monkeypatch.setenv("LDBENCH_DATA", str(tmp_path))
    source = NTKSource(model="mlp", width=4, depth=1, dataset="mnist", n=3, seed=2)
    source.check_available()
    inputs, chosen = source.load_inputs()
    index = _data.sample_order(labels.astype(np.int64), 2, False)[:3]
    pixels = images.astype(np.float64) / 255
    expected = (pixels[index] - pixels.mean()) / pixels.std()
    assert np.array_equal(chosen, labels[index])
    assert np.allclose(inputs[:, 0], expected, rtol=0, atol=1e-12)
    kernel = form_dense(source)
    assert relative_error(kernel, explicit_ntk(source, normalize=True)) < 1e-12


def test_mnist_bad_magic(tmp_path: Path) -> None:
    make_mnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x0d\x01" + b"\0" * 8)
    with pytest.raises(ValueError, match="not an IDX file of unsigned bytes"):
        _data.read_mnist(*_data.data_files("mnist", str(tmp_path)))


@pytest.mark.parametrize("protocol", [2, 4])
def test_cifar_python_read(tmp_path: Path, protocol: int) -> None:
    images, labels = make_cifar(tmp_path, binary=False, protocol=protocol)
    paths = _data.data_files("cifar10", str(tmp_path))
    assert [p.name for p in paths] == [f"data_batch_{i}" for i in range(1, 6)]
    read_images, read_labels = _data.read_cifar_python_batch(paths[1])
    assert np.array_equal(read_images, images[3:6])
    assert np.array_equal(read_labels, labels[3:6])


def test_cifar_binary_read(tmp_path: Path) -> None:
    images, labels = make_cifar(tmp_path / "cifar10", binary=True)
    paths = _data.data_files("cifar10", str(tmp_path))
    assert paths[0].name == "data_batch_1.bin"
    read_images, read_labels = _data.read_cifar_binary_batch(paths[4])
    assert np.array_equal(read_images, images[12:15])
    assert np.array_equal(read_labels, labels[12:15])
    assert _data.count_samples("cifar10", str(tmp_path)) == 15


@pytest.mark.parametrize("binary", [False, True])
def test_cifar_source_loads(tmp_path: Path, binary: bool) -> None:
    images, labels = make_cifar(tmp_path, binary=binary)
    source = NTKSource(
        model="cnn", width=2, dataset="cifar10", data_dir=str(tmp_path), n=4, seed=7
    )
    inputs, chosen = source.load_inputs()
    index = _data.sample_order(labels, 7, False)[:4]
    pixels = images.astype(np.float64) / 255
    mean = pixels.mean(axis=(0, 2, 3))[None, :, None, None]
    std = pixels.std(axis=(0, 2, 3))[None, :, None, None]
    assert np.array_equal(chosen, labels[index])
    assert np.allclose(inputs, (pixels[index] - mean) / std, rtol=0, atol=1e-12)
    assert form_dense(source).shape == (40, 40)


class _RunsCommand:
    """Object whose unpickling would run a shell command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_malicious_pickle_rejected(tmp_path: Path) -> None:
    make_cifar(tmp_path, binary=False)
    marker = tmp_path / "marker"
    batch = {b"data": _RunsCommand(f"touch {marker}"), b"labels": [0]}
    path = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    path.write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(
        pickle.UnpicklingError, match=r"rejected global (posix|nt)\.system"
    ):
        _data.read_cifar_python_batch(path)
    source = NTKSource(
        model="mlp", width=4, dataset="cifar10", data_dir=str(tmp_path), n=2
    )
    with pytest.raises(pickle.UnpicklingError):
        source.form(20, ArrayWriter(20))
    assert not marker.exists()


def test_pickle_with_eval_rejected(tmp_path: Path) -> None:
    path = tmp_path / "data_batch_1"
    # GLOBAL builtins.eval, then call it on a string: never reached.
    path.write_bytes(b"cbuiltins\neval\n(S'1+1'\ntR.")
    with pytest.raises(pickle.UnpicklingError, match="rejected global builtins.eval"):
        _data.read_cifar_python_batch(path)


@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
def test_missing_data_names_paths(tmp_path: Path, dataset: str) -> None:
    folder = tmp_path / "nothing-here"
    source = NTKSource(dataset=dataset, data_dir=str(folder), n=2)
    with pytest.raises(FileNotFoundError) as error:
        source.check_available()
    message = str(error.value)
    assert str(folder.absolute()) in message
    assert "data_dir" in message
    assert "LDBENCH_DATA" in message
    with pytest.raises(FileNotFoundError):
        source.form(20, ArrayWriter(20))


def test_missing_data_env_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LDBENCH_DATA", str(tmp_path / "env-data"))
    with pytest.raises(FileNotFoundError, match=r"from \$LDBENCH_DATA") as error:
        NTKSource(dataset="mnist", n=2).check_available()
    assert str(tmp_path / "env-data" / "MNIST" / "raw") in str(error.value)


def test_n_exceeds_files(tmp_path: Path) -> None:
    make_mnist(tmp_path)
    source = NTKSource(dataset="mnist", data_dir=str(tmp_path), n=20)
    with pytest.raises(ParameterError, match="'n' = 20 exceeds the 12 images"):
        source.check_available()


def test_fingerprint_tracks_files(tmp_path: Path) -> None:
    make_mnist(tmp_path)
    source = NTKSource(dataset="mnist", data_dir=str(tmp_path), n=2)
    before = source.fingerprint()
    make_mnist(tmp_path, count=13)
    assert source.fingerprint() != before
    assert NTKSource().fingerprint() == ""
