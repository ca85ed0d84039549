"""Chignolin's pipeline (benchmarks/chignolin.py) on a tiny budget, and the folding observables it uses."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import chignolin  # noqa: E402

from openmm_cg.analysis.tica import compute_tica  # noqa: E402
from openmm_cg.errors import InputError  # noqa: E402


def test_tica_recovers_the_slow_mode_and_its_autocorrelation():
    # Two independent AR(1) processes (autocorrelations 0.98 and 0.5 per frame) seen through a fixed mixing
    # of three features: TICA must find autocorrelation 0.98^lag first and 0.5^lag second, whatever the mixing.
    rng = np.random.default_rng(0)
    n, lag = 200_000, 3
    slow, fast = np.zeros(n), np.zeros(n)
    for t in range(1, n):
        slow[t] = 0.98 * slow[t - 1] + rng.normal() * np.sqrt(1 - 0.98 ** 2)
        fast[t] = 0.5 * fast[t - 1] + rng.normal() * np.sqrt(1 - 0.5 ** 2)
    mixing = np.array([[1.0, 0.5, 2.0], [-2.0, 1.0, 0.3]])
    features = np.stack([slow, fast], axis=1) @ mixing + 5.0
    tica = compute_tica([features[: n // 2], features[n // 2:]], lag, 2)
    np.testing.assert_allclose(tica.eigenvalues, [0.98 ** lag, 0.5 ** lag], atol=0.01)
    first = tica.transform(features)[:, 0]
    assert abs(np.corrcoef(first, slow)[0, 1]) > 0.999
    assert tica.implied_timescales(1.0)[0] == pytest.approx(-1 / np.log(0.98), rel=0.1)
    with pytest.raises(InputError, match="longer than the lag"):
        compute_tica([features[:3]], 5)


def test_every_stage_on_a_tiny_budget(tmp_path):
    from openmm import app, unit

    from openmm_cg.data.datasets import CGDataset

    data, results = tmp_path / "data", tmp_path / "results"
    arguments = ["--config", str(ROOT / "tests" / "data" / "chignolin_tiny.yaml"), "--work", str(tmp_path / "work"),
                 "--data", str(data), "--results", str(results), "--workers", "1"]
    assert chignolin.main(arguments + ["--stage", "data"]) == 0
    # The "folded structure" here is one mapped all-atom frame: its own RMSD must be 0, and it counts as folded.
    dataset = CGDataset.load(data / "YYDPETGTWY.h5")
    folded = tmp_path / "folded.pdb"
    with open(folded, "w") as handle:
        app.PDBFile.writeFile(dataset.mapping.cg_topology, dataset.positions_nm[7] * unit.nanometer, handle)
    assert chignolin.main(arguments + ["--folded-pdb", str(folded)]) == 0
    result = json.loads((results / "chignolin.json").read_text())
    assert result["all_atom_trajectories"] == 2 and result["cg_replicas"] == 2
    assert result["cg_frames"] == 2 * 10 and result["cg_blew_up"] is None
    folding = result["folding"]
    assert folding["min_ca_rmsd_nm"]["all_atom"] == pytest.approx(0.0, abs=1e-4)
    assert folding["fraction_folded"]["all_atom"] >= 1 / dataset.n_frames
    assert folding["min_ca_rmsd_nm"]["cg"] > 0.0
    # TICA components of the data they were fitted on are uncorrelated with unit variance.
    np.testing.assert_allclose(result["tica"]["all_atom_ic_covariance"], np.eye(2), atol=0.05)
    np.testing.assert_allclose(result["tica"]["all_atom_ic_mean"], [0.0, 0.0], atol=0.05)
    budget = json.loads((data / "budget.json").read_text())
    assert budget["configured_budget_ns"] == pytest.approx(2 * 150 * 10 * 0.004e-3)
    assert budget["all_atom_ns_per_day_here"] > 0
    assert (results / "chignolin_tica.png").stat().st_size > 0
    assert (data / "models" / "chignolin.pt").is_file() and (data / "cg_ca_positions.npz").is_file()


def test_a_folded_structure_of_another_length_is_refused_before_any_md(tmp_path):
    from openmm import app, unit

    from openmm_cg.data.peptides import build_peptide

    topology, positions = build_peptide("YYDPETG")
    folded = tmp_path / "short.pdb"
    with open(folded, "w") as handle:
        app.PDBFile.writeFile(topology, positions * unit.nanometer, handle)
    with pytest.raises(SystemExit, match="7 C-alphas in its first chain; YYDPETGTWY has 10 residues"):
        chignolin.main(["--config", str(ROOT / "tests" / "data" / "chignolin_tiny.yaml"), "--work",
                        str(tmp_path / "work"), "--data", str(tmp_path / "data"), "--folded-pdb", str(folded)])
    assert not (tmp_path / "work").exists() and not (tmp_path / "data").exists()


def test_rmsd_to_itself_is_zero_and_folded_fraction_counts_below_the_threshold():
    from openmm_cg.analysis.protein import ca_indices, compute_ca_rmsd, fraction_folded
    from openmm_cg.workflows import cg_structure

    topology, positions = cg_structure(sequence="YYDPETGTWY")
    rng = np.random.default_rng(1)
    frames = np.stack([positions, positions + rng.normal(0, 0.1, positions.shape)])
    rotation = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    rotation *= np.sign(np.linalg.det(rotation))  # a proper rotation, not a reflection
    frames[0] = frames[0] @ rotation.T + 1.0  # rotated and shifted: still RMSD 0 after superposition
    rmsd = compute_ca_rmsd(frames, topology, positions[ca_indices(topology)])
    assert rmsd[0] == pytest.approx(0.0, abs=1e-6) and rmsd[1] > 0.05
    assert fraction_folded(rmsd, 0.05) == 0.5
