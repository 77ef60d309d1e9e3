"""End-to-end runs through the CLI: records, tables, resume and failures."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import pandas as pd
import pytest

import ldbench
from ldbench.cli import main

SUITE = """
[suite]
name = "small"
reference = {{ name = "dense", method = "lu" }}
timeout = "5m"

[pricing]
cpu_per_hour = 3600.0

[[matrix]]
id = "kms"
source = "synthetic"
kind = "kms"
n = 80
rho = 0.7

[[matrix]]
id = "identity"
source = "synthetic"
kind = "identity"
n = 64
scale = {scale}

[[matrix]]
id = "matern"
source = "matern"
n = 40
outputs = 2
nu = 1.5

[[solver]]
name = "dense"
method = ["cholesky", "ldl", "lu"]
"""


def write_suite(tmp_path: Path, scale: float = 2e-6) -> Path:
    path = tmp_path / "small.toml"
    path.write_text(textwrap.dedent(SUITE.format(scale=scale)))
    return path


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]


def test_run_writes_records_and_tables(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = main(["run", str(write_suite(tmp_path)), "--out", str(run_dir),
                 "--store", str(tmp_path / "store")])
    assert code == 0
    out = capsys.readouterr().out
    for header in ("method", "settings", "TFLOPs", "rel. error", "cost", "wall", "status"):
        assert header in out
    rows = records(run_dir)
    assert len(rows) == 9
    assert all(r["status"] == "ok" for r in rows), [r.get("error") for r in rows]
    kms = [r for r in rows if r["matrix_id"] == "kms"]
    exact = 79 * math.log(1 - 0.7**2)
    for r in kms:
        assert r["reference_method"] == "closed form"
        assert r["logabsdet"] == pytest.approx(exact, rel=1e-12)
    identity = [r for r in rows if r["matrix_id"] == "identity"]
    for r in identity:
        assert r["logabsdet"] == pytest.approx(64 * math.log(2e-6), rel=1e-13)
    matern = [r for r in rows if r["matrix_id"] == "matern"]
    for r in matern:
        assert r["reference_method"].startswith("dense")
        assert r["rel_error"] < 1e-12
    for r in rows:
        assert r["wall_seconds"] == pytest.approx(r["formation_seconds"] + r["solve_seconds"])
        # $3600/h makes the cost equal to the seconds spent.
        assert r["cost_usd"] == pytest.approx(r["wall_seconds"])
    lu = next(r for r in kms if "LU" in r["settings"].upper())
    assert lu["flops"] == pytest.approx(2 * 80**3 / 3)
    for name in ("results.csv", "results.md", "metadata.json", "suite.json", "suite.toml"):
        assert (run_dir / name).exists(), name
    meta = json.loads((run_dir / "metadata.json").read_text())
    assert meta["cpu_count"] >= 1
    assert "numpy" in meta["packages"]
    frame = pd.read_csv(run_dir / "results.csv")
    assert len(frame) == 9


def test_resume_runs_only_unfinished(tmp_path):
    suite = write_suite(tmp_path)
    run_dir = tmp_path / "run"
    store = str(tmp_path / "store")
    assert main(["run", str(suite), "--out", str(run_dir), "--store", store]) == 0
    lines = (run_dir / "results.jsonl").read_text().splitlines()
    kept = lines[:4]
    (run_dir / "results.jsonl").write_text("\n".join(kept) + "\n" + lines[4][:30])
    # What a host killed with SIGKILL leaves of a running job.
    (run_dir / "logs" / "ldbench-job-stale").mkdir()
    assert main(["run", "--resume", str(run_dir), "--store", store]) == 0
    assert list((run_dir / "logs").glob("ldbench-job-*")) == []
    rows = records(run_dir)
    ids = [r["case_id"] for r in rows]
    assert len(ids) == len(set(ids)) == 9
    assert [json.dumps(r) for r in rows[:4]] == [json.dumps(json.loads(x)) for x in kept]


def test_python_api_returns_dataframe(tmp_path):
    frame = ldbench.run(write_suite(tmp_path), run_dir=tmp_path / "run",
                        store=tmp_path / "store", overrides=["solver.dense.method=lu"])
    assert isinstance(frame, pd.DataFrame)
    assert list(frame["method"]) == ["dense"] * 3
    assert (frame["status"] == "ok").all()


def run_file_suite(tmp_path: Path, structure: str, name: str, *extra: str) -> int:
    import numpy as np

    np.save(tmp_path / "a.npy", np.array([[1.0, 2.0], [2.0, 1.0]]))
    path = tmp_path / f"{name}.toml"
    path.write_text(textwrap.dedent(f"""
        [[matrix]]
        id = "indefinite"
        source = "file"
        path = "{tmp_path / 'a.npy'}"
        structure = "{structure}"

        [[solver]]
        name = "dense"
        method = ["cholesky", "ldl"]
    """))
    return main(["run", str(path), "--out", str(tmp_path / name), "--store",
                 str(tmp_path / "store"), *extra])


def test_unsupported_structure_is_skipped(tmp_path):
    assert run_file_suite(tmp_path, "symmetric", "sym") == 0
    rows = records(tmp_path / "sym")
    assert [r["status"] for r in rows] == ["skipped", "ok"]
    assert "spd" in rows[0]["error"]
    assert rows[1]["logabsdet"] == pytest.approx(math.log(3.0), rel=1e-14)
    assert rows[1]["sign"] == -1.0


def test_failures_set_exit_code(tmp_path):
    assert run_file_suite(tmp_path, "spd", "spd") == 1
    rows = records(tmp_path / "spd")
    assert [r["status"] for r in rows] == ["error", "invalid"]
    assert "pivot" in rows[0]["error"]
    assert "sign=-1" in rows[1]["error"]
    assert run_file_suite(tmp_path, "spd", "spd2", "--allow-failures") == 0


def test_failed_reference_sets_exit_code(tmp_path, capsys):
    import numpy as np

    np.save(tmp_path / "b.npy", np.array([[2.0, 0.5], [0.5, 1.0]]))
    path = tmp_path / "ref.toml"
    path.write_text(textwrap.dedent(f"""
        [suite]
        reference = {{ name = "ooc", method = "cholesky", num_blocks = 3 }}

        [[matrix]]
        id = "small"
        source = "file"
        path = "{tmp_path / 'b.npy'}"
        structure = "spd"

        [[solver]]
        name = "dense"
        method = "cholesky"
    """))
    store = str(tmp_path / "store")
    assert main(["run", str(path), "--out", str(tmp_path / "r1"), "--store", store]) == 1
    rows = records(tmp_path / "r1")
    assert rows[0]["status"] == "ok"
    assert rows[0]["reference_logdet"] is None
    assert "num_blocks=3 exceeds the matrix order 2" in rows[0]["reference_error"]
    assert "the reference solver failed on 1 matrix," in capsys.readouterr().err
    assert main(["run", str(path), "--out", str(tmp_path / "r2"), "--store", store,
                 "--allow-failures"]) == 0


def test_resume_keeps_overrides_and_store(tmp_path, monkeypatch):
    monkeypatch.setenv("LDBENCH_STORE", str(tmp_path / "default-store"))
    suite = write_suite(tmp_path)
    run_dir = tmp_path / "run"
    store = tmp_path / "store"
    args = ["--set", "matrix.kms.n=30", "--set", "solver.dense.method=lu"]
    assert main(["run", str(suite), "--out", str(run_dir), "--store", str(store), *args]) == 0
    first = records(run_dir)
    (run_dir / "results.jsonl").write_text(
        "\n".join(json.dumps(r) for r in first[:1]) + "\n")
    assert main(["run", "--resume", str(run_dir)]) == 0
    resumed = records(run_dir)
    assert [r["case_id"] for r in resumed] == [r["case_id"] for r in first]
    kms = resumed[0]
    assert kms["order"] == 30
    assert kms["logabsdet"] == pytest.approx(29 * math.log(1 - 0.7**2), rel=1e-12)
    assert not (tmp_path / "default-store").exists()


def test_sign_mismatch_with_reference_is_invalid(tmp_path):
    import numpy as np

    matrix = np.array([[0.0, 1.0], [1.0, 0.0]])
    np.save(tmp_path / "swap.npy", matrix)
    path = tmp_path / "sign.toml"
    path.write_text(textwrap.dedent(f"""
        [[matrix]]
        id = "swap"
        source = "file"
        path = "{tmp_path / 'swap.npy'}"
        logdet = 0.0
        sign = 1.0

        [[solver]]
        name = "dense"
        method = "lu"
    """))
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--store",
                 str(tmp_path / "store")]) == 1
    (row,) = records(tmp_path / "run")
    assert row["status"] == "invalid"
    assert row["sign"] == -1.0
    assert "sign of det A is -1" in row["error"]


def test_python_api_parses_limits(tmp_path):
    frame = ldbench.run(write_suite(tmp_path), run_dir=tmp_path / "run",
                        store=tmp_path / "store", overrides=["solver.dense.method=lu"],
                        timeout="2m", memory_limit="4GB")
    assert (frame["status"] == "ok").all()
    with pytest.raises(ValueError, match="must be positive"):
        ldbench.run(write_suite(tmp_path), run_dir=tmp_path / "run2",
                    store=tmp_path / "store", memory_limit="0MB")


def test_resume_rejects_new_overrides(tmp_path, capsys):
    assert main(["run", "--resume", str(tmp_path), "--set", "matrix.n=3"]) == 2
    assert "drop --set" in capsys.readouterr().err


def test_resume_retry_failed_reruns_failures(tmp_path):
    from ldbench._runner import read_records

    assert run_file_suite(tmp_path, "spd", "spd") == 1
    run_dir = tmp_path / "spd"
    # Nothing runs again, but the run still contains failures.
    assert main(["run", "--resume", str(run_dir)]) == 1
    assert len(records(run_dir)) == 2
    assert main(["run", "--resume", str(run_dir), "--retry-failed"]) == 1
    assert len(records(run_dir)) == 4
    latest = read_records(run_dir)
    assert [r["status"] for r in latest] == ["error", "invalid"]
    assert latest[0]["finished_at"] > records(run_dir)[0]["finished_at"]


def test_reference_matrix_measures_against_other_matrix(tmp_path):
    path = tmp_path / "perturbed.toml"
    path.write_text(textwrap.dedent("""
        [[matrix]]
        id = "exact"
        source = "synthetic"
        kind = "kms"
        n = 50
        rho = 0.5

        [[matrix]]
        id = "perturbed"
        source = "synthetic"
        kind = "kms"
        n = 50
        rho = 0.51
        reference_matrix = "exact"

        [[solver]]
        name = "dense"
        method = "cholesky"
    """))
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--store",
                 str(tmp_path / "store")]) == 0
    exact, perturbed = records(tmp_path / "run")
    reference = 49 * math.log(1 - 0.5**2)
    estimate = 49 * math.log(1 - 0.51**2)
    assert perturbed["reference_logdet"] == pytest.approx(reference, rel=1e-14)
    assert perturbed["reference_method"] == "closed form of exact"
    assert perturbed["rel_error"] == pytest.approx(abs(estimate - reference) / abs(reference),
                                                   rel=1e-9)
    assert exact["rel_error"] < 1e-12


def test_python_api_rejects_unknown_keyword(tmp_path):
    with pytest.raises(TypeError, match=r"unknown keyword arguments \['out'\]; valid: .*run_dir"):
        ldbench.run(write_suite(tmp_path), out=tmp_path / "run")


def test_disk_full_message_names_failed_file_folder(tmp_path):
    from ldbench._worker import _os_error_message

    scratch = tmp_path / "scratch"
    (scratch / "case").mkdir(parents=True)
    (scratch / "case" / "part.bin").write_bytes(b"x" * 1024)
    job = {"scratch_dir": str(scratch), "store": str(tmp_path / "store")}
    elsewhere = OSError(28, "No space left on device", "/mnt/ckpt/ooc-1/state.json")
    message = _os_error_message(elsewhere, job)
    assert "The disk behind /mnt/ckpt/ooc-1 is full" in message
    assert "removed 1 partial scratch files" in message
    plain = _os_error_message(OSError(28, "No space left on device"), job)
    assert f"The disk behind {scratch} is full" in plain
