"""The openmm-cg command: stages chained from the shell, clear errors with exit code 2."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

import pytest

from openmm_cg.cli import main


def test_info_reads_metadata(ala2_exported, capsys):
    assert main(["info", str(ala2_exported["float32"])]) == 0
    metadata = json.loads(capsys.readouterr().out)
    assert metadata["n_beads"] == 6 and "priors" not in metadata


def test_simulate_then_analyze(ala2_exported, ala2_dataset, tmp_path, capsys):
    dataset_path, _ = ala2_dataset
    assert main(["simulate", str(ala2_exported["float32"]), "--init", str(dataset_path), "--replicas", "4",
                 "--steps", "400", "--report-interval", "20", "--checkpoint-interval", "200", "--platform", "CPU",
                 "--out", str(tmp_path / "sim")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["frames"] == 20 and result["n_replicas"] == 4
    assert main(["analyze", "--reference", str(dataset_path), "--cg", str(tmp_path / "sim"), "--bins", "36",
                 "--out", str(tmp_path / "analysis")]) == 0
    metrics = json.loads((tmp_path / "analysis" / "metrics.json").read_text())
    assert metrics["frames"]["cg"] == 80
    # The CG frames must resemble the reference more than as many frames spread evenly over the (phi, psi) torus
    # would (same sample size, same bins: the same finite-sample bias), whose divergence is the bound.
    from openmm_cg.analysis.ramachandran import PhiPsi, histogram, js_divergence, phi_psi

    _, dataset = ala2_dataset
    reference = histogram(phi_psi(dataset.positions_nm, dataset.mapping.cg_topology), 36)
    uniform = np.random.default_rng(0).uniform(-np.pi, np.pi, size=(2, 80))
    bound = js_divergence(histogram(PhiPsi(uniform[0], uniform[1], np.zeros(80)), 36), reference)
    assert metrics["js_cg_vs_aa"] < bound - 0.1  # measured: 0.41 against 0.63
    assert (tmp_path / "analysis" / "fes.png").stat().st_size > 10_000
    # Running the same analysis again refuses to overwrite its results.
    assert main(["analyze", "--reference", str(dataset_path), "--cg", str(tmp_path / "sim"),
                 "--out", str(tmp_path / "analysis")]) == 2
    assert "already holds an earlier analysis run" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["info", "missing.pt"], "does not exist"),
    (["map", "--reference", "no_such_folder", "--out", "x.h5"], "holds no reference files"),
    (["train", "no_such_config.yaml"], "does not exist"),
    (["pressure-match", "missing.pt", "--dataset", "x.h5", "--work", "w", "--out", "o.pt"], "cannot read x.h5"),
])
def test_errors_are_reported_not_raised(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_console_script_is_installed():
    """The ``openmm-cg`` entry point that the install put beside this Python runs."""
    script = Path(sys.executable).parent / "openmm-cg"
    assert script.is_file(), f"{script} is not installed"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "demo" in result.stdout and "simulate" in result.stdout
