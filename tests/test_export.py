"""The exported .pt is the whole potential: bare TorchForce reproduces the training model."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from openmm_cg._runtime import openmm
from openmm_cg.errors import ModelFileError
from openmm_cg.export import load_eager, load_exported, read_metadata
from openmm_cg.simulation.potential import CGPotential
from openmm_cg.topology import replicate_topology

from conftest import cg_frames

BARE_TORCHFORCE = """
import json, sys
import numpy as np
import torch          # openmm-torch needs torch loaded first; openmm_cg is NOT imported here
import openmm, openmmtorch
path, positions_file = sys.argv[1], sys.argv[2]
x = np.load(positions_file)
system = openmm.System()
for _ in range(len(x)):
    system.addParticle(12.0)
system.addForce(openmmtorch.TorchForce(path))
context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
context.setPositions(x)
state = context.getState(getEnergy=True, getForces=True)
print(json.dumps({"energy": state.getPotentialEnergy()._value,
                  "forces": np.array(state.getForces(asNumpy=True)._value).tolist()}))
"""


def _training_model_energy_forces(module, x: np.ndarray, n_beads: int):
    model = module.double()
    positions = torch.as_tensor(x.reshape(-1, n_beads, 3)).requires_grad_(True)
    energy = model.energy_batch(positions).sum()
    (grad,) = torch.autograd.grad(energy, positions)
    module.float()
    return energy.item(), -grad.numpy().reshape(-1, 3)


def test_bare_torchforce_equals_training_model(ala2_module, ala2_exported, ala2_dataset, tmp_path):
    module, _, _ = ala2_module
    _, dataset = ala2_dataset
    x = cg_frames(dataset, 4).reshape(-1, 3)
    np.save(tmp_path / "x.npy", x)
    script = tmp_path / "bare.py"
    script.write_text(BARE_TORCHFORCE)
    result = subprocess.run([sys.executable, str(script), str(ala2_exported["float64"]), str(tmp_path / "x.npy")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    energy, forces = _training_model_energy_forces(module, x, dataset.mapping.n_beads)
    assert abs(out["energy"] - energy) / abs(energy) < 1e-6
    error = np.abs(np.array(out["forces"]) - forces).max() / np.abs(forces).max()
    assert error < 1e-6


def test_forces_are_minus_gradient_of_energy_in_openmm(ala2_exported, ala2_dataset):
    _, dataset = ala2_dataset
    potential = CGPotential.load(ala2_exported["float64"])
    system = potential.createSystem(potential.topology(1))
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    x = cg_frames(dataset, 1)[0]

    def energy(positions):
        context.setPositions(positions)
        return context.getState(getEnergy=True).getPotentialEnergy()._value

    context.setPositions(x)
    forces = np.array(context.getState(getForces=True).getForces(asNumpy=True)._value)
    h = 1e-5
    numeric = np.zeros_like(x)
    for i in range(x.shape[0]):
        for d in range(3):
            plus, minus = x.copy(), x.copy()
            plus[i, d] += h
            minus[i, d] -= h
            numeric[i, d] = -(energy(plus) - energy(minus)) / (2 * h)
    np.testing.assert_allclose(forces, numeric, rtol=1e-6, atol=1e-4 * np.abs(forces).max())


def test_replicas_and_dtypes(ala2_exported, ala2_dataset):
    _, dataset = ala2_dataset
    module, metadata = load_exported(ala2_exported["float32"])
    x = torch.as_tensor(cg_frames(dataset, 3))
    singles = [module(x[k]).item() for k in range(3)]
    total64 = module(x.reshape(-1, 3))
    total32 = module(x.reshape(-1, 3).float())
    assert total64.dtype == torch.float64 and total32.dtype == torch.float32
    assert total64.item() == pytest.approx(sum(singles), rel=1e-5)
    assert total32.item() == pytest.approx(total64.item(), rel=1e-5)
    with pytest.raises(Exception, match="multiple of this model's bead count"):
        module(x.reshape(-1, 3)[:-1])


def test_metadata_is_readable_without_a_system(ala2_exported):
    metadata = read_metadata(ala2_exported["float32"])
    assert metadata["units"]["positions"] == "nm" and metadata["units"]["energy"] == "kJ/mol"
    assert metadata["bead_names"] == ["C", "N", "CA", "CB", "C", "N"]
    assert metadata["temperatures_K"] == [300.0] and metadata["dtype"] == "float32"
    assert len(metadata["training_data_sha256"]) == 64
    assert set(metadata["prior_forms"]) == {"bond", "angle", "dihedral", "repulsion"}


def test_fixture_network_is_not_trivial(ala2_module, ala2_dataset):
    module, _, _ = ala2_module
    _, dataset = ala2_dataset
    x = torch.as_tensor(cg_frames(dataset, 8), dtype=torch.float32).requires_grad_(True)
    (grad,) = torch.autograd.grad(module.network_energy(x).sum(), x)
    assert grad.abs().max() > 1.0  # kJ/mol/nm: the tests above exercise the network, not only the priors


def test_eager_rebuild_equals_scripted(ala2_exported, ala2_dataset):
    _, dataset = ala2_dataset
    scripted, _ = load_exported(ala2_exported["float64"])
    eager, _ = load_eager(ala2_exported["float64"])
    x = torch.as_tensor(cg_frames(dataset, 2))
    assert torch.allclose(eager.energy_batch(x), scripted.energy_batch(x), rtol=1e-12)


def test_foreign_and_corrupted_files_are_refused(ala2_exported, tmp_path):
    class Plain(torch.nn.Module):
        def forward(self, positions):
            return positions.sum()

    foreign = tmp_path / "foreign.pt"
    torch.jit.script(Plain()).save(str(foreign))
    with pytest.raises(ModelFileError, match="not an openmm-cg model"):
        load_exported(foreign)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(ala2_exported["float32"].read_bytes()[:5000])
    with pytest.raises(ModelFileError, match="not a loadable TorchScript file"):
        load_exported(truncated)
    pickled = tmp_path / "state_dict.pt"
    torch.save({"weight": torch.zeros(3)}, pickled)
    with pytest.raises(ModelFileError, match="not a loadable TorchScript file"):
        load_exported(pickled)
    with pytest.raises(ModelFileError, match="does not exist"):
        load_exported(tmp_path / "missing.pt")
    with pytest.raises(ModelFileError, match="neither a file nor a shipped model"):
        CGPotential.load("no_such_model")


def test_topology_that_does_not_fit_the_model_is_refused(ala2_exported):
    from openmm import app

    potential = CGPotential.load(ala2_exported["float32"])
    with pytest.raises(ModelFileError, match="not a multiple"):
        topology = app.Topology()
        residue = topology.addResidue("X", topology.addChain())
        for _ in range(7):
            topology.addAtom("C", None, residue)
        potential.createSystem(topology)
    reordered = potential.topology(1)
    atoms = list(reordered.atoms())
    atoms[0].name, atoms[1].name = atoms[1].name, atoms[0].name
    with pytest.raises(ModelFileError, match="expects"):
        potential.createSystem(reordered)


def test_backends_and_native_priors_agree(ala2_exported, ala2_dataset):
    _, dataset = ala2_dataset
    potential = CGPotential.load(ala2_exported["float64"])
    topology = potential.topology(2)
    x = cg_frames(dataset, 2).reshape(-1, 3)
    results = []
    for backend in ("torchforce", "pythonforce"):
        for native in (False, True):
            system = potential.createSystem(topology, backend=backend, priors_as_openmm_forces=native)
            assert system.getParticleMass(3)._value == pytest.approx(potential.masses_amu[3])
            context = openmm.Context(system, openmm.VerletIntegrator(0.001),
                                     openmm.Platform.getPlatformByName("Reference"))
            context.setPositions(x)
            state = context.getState(getEnergy=True, getForces=True)
            results.append((state.getPotentialEnergy()._value, np.array(state.getForces(asNumpy=True)._value)))
    for energy, forces in results[1:]:
        assert energy == pytest.approx(results[0][0], rel=1e-9)
        np.testing.assert_allclose(forces, results[0][1], rtol=1e-8, atol=1e-8)


def test_replicated_topology_has_one_chain_set_per_replica(ala2_exported):
    potential = CGPotential.load(ala2_exported["float32"])
    topology = potential.topology(5)
    assert topology.getNumAtoms() == 30 and topology.getNumBonds() == 25
    assert potential.n_replicas_of(topology) == 5
    assert replicate_topology(potential.topology(1), 2).getNumChains() == 2
