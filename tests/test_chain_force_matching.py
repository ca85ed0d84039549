"""Force-matched pair tables for chains (option (c) of the learned dynamics): recovery of known pair
forces, the TorchScript potential in OpenMM, and the relaxation step."""
import numpy as np
import torch

from openmm_cg.classical.chain_force_matching import ChainForceTables, fit_chain_force_tables
from openmm_cg.dynamics.data import ChainData
from openmm_cg.dynamics.propagator import OpenMMRelaxation, OpenMMRelaxer


def true_pair_energy(r, separation):
    if separation == 1:
        return 500.0 * (r - 0.6) ** 2
    if separation == 2:
        return 40.0 * (r - 1.0) ** 2
    return 500.0 * torch.exp(-r / 0.15) * (r < 2.0)  # excluded volume: stiff at overlap


def true_forces(x):
    x = torch.as_tensor(x, dtype=torch.float64).requires_grad_(True)
    i, j = torch.triu_indices(x.shape[0], x.shape[0], 1)
    r = torch.linalg.vector_norm(x[j] - x[i], dim=1)
    energy = sum(true_pair_energy(r[(j - i) == s] if s < 3 else r[(j - i) >= 3], s).sum() for s in (1, 2, 3))
    (grad,) = torch.autograd.grad(energy, x)
    return -grad.numpy()


def random_chain_frames(n_beads, n_frames, rng):
    frames = []
    for _ in range(n_frames):
        steps = rng.normal(size=(n_beads - 1, 3))
        steps *= (0.6 + 0.05 * rng.normal(size=(n_beads - 1, 1))) / np.linalg.norm(steps, axis=1, keepdims=True)
        frames.append(np.vstack([np.zeros(3), np.cumsum(steps, axis=0)]))
    return np.array(frames)


def test_tables_recover_known_pair_forces_and_run_in_openmm():
    rng = np.random.default_rng(0)
    chains = []
    for n in (5, 7, 9, 6):
        x = random_chain_frames(n, 60, rng)
        f = np.array([true_forces(frame) for frame in x])
        chains.append(ChainData.from_frames("A" * (4 * n), np.repeat(np.arange(n), 4), x, f, 100.0, 300.0))
    tables = fit_chain_force_tables(chains, 300.0, max_separation=3, cutoff_nm=2.0, n_knots=40)
    assert ChainForceTables.from_dict(tables.to_dict()) == tables
    module = tables.potential([7])
    for separation, r in ((1, np.linspace(0.56, 0.64, 9)), (2, np.linspace(0.9, 1.1, 9)), (3, np.linspace(0.8, 1.6, 9))):
        rr = torch.tensor(r, requires_grad=True)
        (fitted,) = torch.autograd.grad(module.table(rr, torch.full((len(r),), separation - 1)).sum(), rr)
        (exact,) = torch.autograd.grad(true_pair_energy(rr, separation).sum(), rr)
        scale = float(exact.abs().max())
        np.testing.assert_allclose(-fitted.numpy(), -exact.numpy(), atol=0.05 * scale, err_msg=f"separation {separation}")

    # The scripted potential in a TorchForce gives the module's forces, which match the exact ones.
    import openmm
    import openmmtorch

    x = chains[1].positions_nm[3].astype(np.float64)
    system = openmm.System()
    for _ in range(7):
        system.addParticle(400.0)
    system.addForce(openmmtorch.TorchForce(torch.jit.script(module)))
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(x)
    forces = context.getState(getForces=True).getForces(asNumpy=True).value_in_unit(
        openmm.unit.kilojoule_per_mole / openmm.unit.nanometer)
    xt = torch.tensor(x, requires_grad=True)
    (grad,) = torch.autograd.grad(module(xt), xt)
    np.testing.assert_allclose(forces, -grad.numpy(), rtol=1e-6, atol=1e-6)
    exact = true_forces(x)
    assert np.sqrt(((forces - exact) ** 2).mean()) < 0.05 * np.sqrt((exact ** 2).mean())


def test_relaxation_separates_overlapping_beads():
    rng = np.random.default_rng(1)
    chains = []
    for n in (6, 8):
        x = random_chain_frames(n, 60, rng)
        chains.append(ChainData.from_frames("A" * (4 * n), np.repeat(np.arange(n), 4), x,
                                            np.array([true_forces(f) for f in x]), 100.0, 300.0))
    tables = fit_chain_force_tables(chains, 300.0, n_knots=30)
    frame = torch.tensor(random_chain_frames(6, 1, rng)[0])
    frame[4] = frame[1] + torch.tensor([0.05, 0.0, 0.0], dtype=torch.float64)  # beads 1 and 4 overlap

    class Stub:
        positions_nm = frame.clone()
        step_ps = 5.0

    refine = OpenMMRelaxer(tables, np.full(6, 400.0), [6], 300.0, OpenMMRelaxation(steps=20), platform_name="Reference")
    relaxed = refine(frame, Stub())
    assert float(torch.linalg.vector_norm(relaxed[4] - relaxed[1])) > 0.2  # from 0.05 nm; measured 0.25
    before = torch.linalg.vector_norm(frame[1:] - frame[:-1], dim=1)
    after = torch.linalg.vector_norm(relaxed[1:] - relaxed[:-1], dim=1)
    assert float(after[:3].min()) > 0.4 and float(after[:3].max()) < 0.8  # intact bonds stay intact
    assert float(after[3:].max()) < float(before[3:].max())  # the bonds stretched by the move are pulled back


def test_propagator_with_openmm_relaxation_resumes_bit_identically(tmp_path):
    from test_dynamics import SEQUENCES, SMALL, TYPES, initial_history, random_model

    from openmm_cg.dynamics.chains import build_chain_batch
    from openmm_cg.dynamics.propagator import Propagator

    chains = build_chain_batch(SEQUENCES, TYPES, 4)
    repulsion = np.linspace(50.0, 0.0, 20).tolist()  # kJ/mol/nm, pushing beads apart below 2 nm
    tables = ChainForceTables([0.3] * 3, [2.0] * 3, [repulsion] * 3, 3, 300.0)
    model = random_model()
    history = initial_history(chains, SMALL.history)

    def propagator():
        relaxer = OpenMMRelaxer(tables, np.full(chains.n_beads, 400.0), chains.bead_counts, 300.0,
                                OpenMMRelaxation(steps=5), seed=7, platform_name="Reference")
        return Propagator(model, chains, history, 3, refine=relaxer)

    first = propagator()
    first.run(4)
    first.save_checkpoint(tmp_path / "state.pt")
    expected = [first.step().clone() for _ in range(3)]
    resumed = propagator()
    resumed.load_checkpoint(tmp_path / "state.pt")
    for frame in expected:
        assert torch.equal(resumed.step(), frame)
    fresh = propagator()  # without the relaxer's saved random state the continuation differs
    fresh.load_state({key: value for key, value in torch.load(tmp_path / "state.pt", weights_only=True).items()
                      if key != "refine_state"})
    assert not torch.equal(fresh.step(), expected[0])
