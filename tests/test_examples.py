"""Every example and the demo run end to end (with small budgets here)."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "openmm_cg" / "models" / "alanine_dipeptide_cgschnet.pt"


@pytest.mark.skipif(not SHIPPED.exists(), reason="the shipped model is not in this checkout")
def test_simulate_example_with_the_shipped_model(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "simulate_alanine_dipeptide.py"),
                             "--replicas", "2", "--steps", "400", "--dcd", str(tmp_path / "t.dcd")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "basin populations" in result.stdout and (tmp_path / "t.dcd").stat().st_size > 0


@pytest.mark.slow  # the same stages run in test_demo_small_budget and test_training; this adds the example's wiring
def test_reproduce_example_smoke(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "reproduce_alanine_dipeptide_model.py"),
                             "--work", str(tmp_path / "work"), "--out", str(tmp_path / "model.pt"),
                             "--frames-per-seed", "150", "--max-epochs", "1"],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    metadata = json.loads((tmp_path / "model.json").read_text())
    assert metadata["network_config"]["n_features"] == 128 and metadata["n_beads"] == 6
    assert len(metadata["training"]["summary"]["validation_trajectories"]) == 2


def test_demo_small_budget(tmp_path):
    from openmm_cg.workflows import demo

    report = demo(tmp_path / "report", reference_frames_per_seed=300, train_minutes=0.1, cg_replicas=2,
                      cg_steps=500)
    for name in ("metrics.json", "fes.png", "training_curve.png", "model.pt"):
        assert (tmp_path / "report" / name).exists(), name
    assert report["ramachandran"]["frames"]["cg"] == 2 * 500 // 250
    assert set(report["stage_seconds"]) == {"reference", "mapping", "training", "simulation", "analysis"}


def test_one_model_many_molecules_example(tmp_path):
    from typed_models import save_typed, toy_typed_module

    model = save_typed(toy_typed_module(), tmp_path / "typed.pt", dtype="float32")
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "one_model_many_molecules.py"), str(model),
                             "--molecule", "MOL:A,MOL:B,MOL:C,MOL:A,MOL:B", "--molecule", "MOL:C,MOL:C,MOL:B",
                             "--steps", "200", "--out", str(tmp_path / "system.pt")],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    total, summed = re.search(r"System energy (\S+) kJ/mol; molecules alone .* = (\S+) kJ/mol", result.stdout).groups()
    assert abs(float(total) - float(summed)) <= 1e-4 * abs(float(summed))
    assert (tmp_path / "system.pt").exists()
