"""The peptide transferability study (benchmarks/peptide_transferability.py), every stage on a tiny budget."""
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import peptide_transferability as study  # noqa: E402

TINY = ROOT / "tests" / "data" / "peptide_study_tiny.yaml"


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    """Every stage of the study on the tiny budget: (work, data, results folders, the arguments that ran it)."""
    root = tmp_path_factory.mktemp("study")
    work, data, results = root / "work", root / "data", root / "results"
    arguments = ["--config", str(TINY), "--work", str(work), "--data", str(data), "--results", str(results),
                 "--workers", "1"]
    assert study.main(arguments) == 0
    return work, data, results, arguments


def test_every_stage_on_a_tiny_budget(tiny_study):
    from openmm_cg.data.datasets import CGDataset
    from openmm_cg.outputs import sha256_of_file

    work, data, results, arguments = tiny_study
    result = json.loads((results / "peptide_transferability.json").read_text())
    assert result["training_sequences"] == ["A", "G", "S", "GA", "SA"] and result["held_out_sequences"] == ["GS"]
    # 4 seeds x 40 frames x 10 steps x 4 fs
    assert result["all_atom_ns_per_molecule"] == {s: pytest.approx(4 * 40 * 10 * 0.004e-3) for s in
                                                  ["A", "G", "S", "GA", "SA", "GS"]}
    residues = result["molecules"]["GS"]["residues"]
    assert list(residues) == ["GLY2", "SER3"]
    for residue in residues.values():
        for model in study.MODELS:
            assert 0.0 <= residue[model]["js_cg_vs_aa"] <= np.log(2) + 1e-12
        assert residue["transferable"]["frames"]["cg"] == 2 * 10  # 2 replicas x 100 steps / 10
        assert sum(residue["transferable"]["basin_populations"]["aa"].values()) == pytest.approx(1.0)
    median = result["median_js_held_out_residues"]
    assert result["median_js_ratio_transferable_over_dedicated"] == pytest.approx(
        median["transferable"] / median["dedicated"])
    assert result["held_out_js_below_priors_only"] == (
        result["molecules"]["GS"]["mean_js"]["transferable"] < result["molecules"]["GS"]["mean_js"]["priors_only"])
    assert "GS" in result["held_out_force_rmse_kJ_per_mol_nm"]
    assert (results / "peptide_fes.png").stat().st_size > 0

    # The committed form of the data: float32 datasets named in a manifest with their SHA-256.
    manifest = json.loads((data / "manifest.json").read_text())["datasets"]
    for sequence, entry in manifest.items():
        assert entry["sha256"] == sha256_of_file(data / f"{sequence}.h5")
        dataset = CGDataset.load(data / f"{sequence}.h5")
        assert dataset.positions_nm.dtype == np.float32 and dataset.forces_kJ_per_mol_nm.dtype == np.float32
        assert len(dataset.trajectory_names) == 4

    # What is kept (the committed folder) is all a later run needs: without the work folder it redoes nothing
    # and gives the same numbers.
    assert sorted(p.name for p in (data / "models").glob("*.pt")) == [
        "dedicated_GS.pt", "dedicated_GS.state.pt", "priors_only.pt", "priors_only.state.pt", "transferable.pt",
        "transferable.state.pt"]
    assert sorted(p.name for p in (data / "angles").iterdir()) == [f"{m}_GS.npz" for m in sorted(study.MODELS)]
    work.rename(work.with_name("work_aside"))
    assert study.main(arguments) == 0
    assert not work.exists() or not any(work.rglob("*.pt"))
    shutil.rmtree(work, ignore_errors=True)
    work.with_name("work_aside").rename(work)  # for the tests that read the simulations
    again = json.loads((results / "peptide_transferability.json").read_text())
    assert again["molecules"] == result["molecules"]


def test_the_model_names_the_residues_it_does_not_know(tiny_study):
    from openmm_cg import CGPotential
    from openmm_cg.errors import ModelFileError
    from openmm_cg.workflows import cg_structure

    _, data, _, _ = tiny_study
    topology, _ = cg_structure(sequence="GCW")
    with pytest.raises(ModelFileError, match="never seen: CYS:CB, TRP:CB"):
        CGPotential.load(data / "models" / "transferable.pt").createSystem(topology)


def test_example_simulates_a_peptide_the_model_never_saw(tiny_study):
    import subprocess

    _, data, _, _ = tiny_study
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "simulate_unseen_peptide.py"),
                             "--model", str(data / "models" / "transferable.pt"), "--sequence", "GAS",
                             "--replicas", "2", "--steps", "200"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [line.split()[0] for line in result.stdout.splitlines() if "basin populations" in line] == [
        "GLY2", "ALA3", "SER4"]


@pytest.mark.parametrize("change, message", [
    ({"held_out_dipeptides": ["GW"]}, r"residues no training molecule has: \['TRP'\]"),
    ({"held_out_dipeptides": ["AG"]}, r"repeats the neighbours \['ALA-GLY'\]"),
    ({"held_out_dipeptides": ["ALA-GLY"]}, r"repeats the neighbours \['ALA-GLY'\]"),
    ({"held_out_dipeptides": ["GA"]}, "listed twice"),
])
def test_held_out_molecules_must_be_new_combinations_of_training_residues(tmp_path, change, message):
    config = yaml.safe_load(TINY.read_text()) | change
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit, match=message):
        study.load_config(path)


def test_analyze_gives_every_residue_of_a_peptide(tiny_study, tmp_path):
    from openmm_cg.workflows import analyze

    work, data, _, _ = tiny_study
    metrics = analyze(data / "GS.h5", [work / "simulations" / "transferable" / "GS"], tmp_path / "analysis")
    assert list(metrics["residues"]) == ["GLY2", "SER3"]
    for residue in metrics["residues"].values():
        assert 0.0 <= residue["js_cg_vs_aa"] <= np.log(2) + 1e-12 and residue["frames"]["cg"] == 20
    assert (tmp_path / "analysis" / "fes.png").stat().st_size > 0
