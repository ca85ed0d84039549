"""The learned propagator: integration, batching, checkpoints, export, equivariance, bad input."""
from dataclasses import asdict

import numpy as np
import pytest
import torch

from openmm_cg.dynamics.chains import build_chain_batch
from openmm_cg.dynamics.clustering import cluster_bond_graph
from openmm_cg.dynamics.model import CGDynamics, DynamicsConfig, ScoreNetwork
from openmm_cg.dynamics.propagator import Propagator, RolloutChecks, score_refiner
from openmm_cg.errors import InputError, ModelFileError, RolloutStopped

TYPES = ["A", "B", "C"]
SEQUENCES = ["ABCABCABCAB", "CCCAAABBBCCCA", "ABBA" * 4]
SMALL = DynamicsConfig(history=3, n_features=16, n_fine_layers=1, n_layers=2, n_rbf=8, cutoff_nm=3.0)


def zigzag(n_beads: int, offset=(0.0, 0.0, 0.0)) -> np.ndarray:
    k = np.arange(n_beads)
    return np.stack([0.6 * k, 0.3 * (k % 2), np.zeros(n_beads)], axis=1) + np.asarray(offset)


def initial_history(chains, k, seed=0):
    rng = np.random.default_rng(seed)
    start = np.concatenate([zigzag(c, (5.0 * i, 0, 0)) for i, c in enumerate(chains.bead_counts)])
    frames = [start + 0.01 * rng.normal(size=start.shape) * j for j in range(k)]
    return torch.tensor(np.array(frames))


def random_model(seed=0) -> CGDynamics:
    torch.manual_seed(seed)
    model = CGDynamics(SMALL, len(TYPES), step_ps=10.0).double()
    for layer in (model.gnn.pair_weight[-1], model.velocity_weights[-1], model.log_std[-1]):
        torch.nn.init.normal_(layer.weight, std=0.02)  # the read-outs start at zero: give them small weights
    return model.eval()


class ConstantAcceleration(torch.nn.Module):
    """Mean delta = a dt^2 for every bead, no spread: an analytically solvable propagator."""

    def __init__(self, acceleration, step_ps: float):
        super().__init__()
        self.history = 2
        self.register_buffer("step_ps", torch.tensor(step_ps, dtype=torch.float64))
        self.acceleration = torch.nn.Parameter(torch.tensor(acceleration, dtype=torch.float64), requires_grad=False)

    def bead_embedding(self, types, edges, assignment, n_beads: int):
        return torch.zeros(n_beads, 1, dtype=torch.float64)

    def delta_distribution(self, history, embedding, pairs, bonded):
        mean = (self.acceleration * self.step_ps ** 2).expand(history.shape[1], 3)
        return mean, torch.zeros(history.shape[1], dtype=torch.float64)


def test_clustering_cuts_chains_into_contiguous_near_equal_beads():
    assignment = cluster_bond_graph(14, [(k, k + 1) for k in range(13)], 4)
    assert assignment.tolist() == [0] * 4 + [1] * 4 + [2] * 3 + [3] * 3
    # A branched molecule: the depth-first walk keeps each bead connected.
    bonds = [(0, 1), (1, 2), (2, 3), (1, 4), (4, 5), (5, 6)]
    assignment = cluster_bond_graph(7, bonds, 2)
    assert assignment.tolist() == [0, 0, 1, 1, 2, 2, 3]  # walk 0-1-2-3, back to 1, then 4-5-6
    with pytest.raises(InputError, match="not connected"):
        cluster_bond_graph(4, [(0, 1), (2, 3)], 2)


def test_constant_acceleration_gives_the_analytic_trajectory():
    chains = build_chain_batch(SEQUENCES[:2], TYPES, 4)
    dt, a = 10.0, np.array([1e-3, -2e-3, 5e-4])  # nm/ps^2
    x0 = torch.tensor(np.concatenate([zigzag(c, (5.0 * i, 0, 0)) for i, c in enumerate(chains.bead_counts)]))
    v0 = torch.tensor([0.01, 0.0, -0.02], dtype=torch.float64)  # nm/ps
    propagator = Propagator(ConstantAcceleration(a, dt), chains, torch.stack([x0 - v0 * dt, x0]), seed=0,
                            checks=RolloutChecks(max_step_nm=10.0))
    for n in range(1, 21):
        frame = propagator.step()
        expected = x0 + v0 * n * dt + torch.tensor(a) * dt ** 2 * n * (n + 1) / 2
        torch.testing.assert_close(frame, expected, rtol=0, atol=1e-12)
    velocity = (v0 + torch.tensor(a) * 20 * dt).expand(chains.n_beads, 3)
    torch.testing.assert_close(propagator.velocities_nm_per_ps(), velocity, rtol=0, atol=1e-12)


def test_batched_chains_follow_the_same_trajectories_as_single_chains():
    model = random_model()
    batch = build_chain_batch(SEQUENCES, TYPES, 4)
    history = initial_history(batch, SMALL.history)
    together = Propagator(model, batch, history, seed=7, checks=RolloutChecks(collision_nm=0.0))
    frames = [together.step() for _ in range(5)]
    for c, piece in enumerate(batch.chain_slices()):
        alone_chains = build_chain_batch([SEQUENCES[c]], TYPES, 4)
        alone = Propagator(model, alone_chains, history[:, piece], seed=7, checks=RolloutChecks(collision_nm=0.0))
        alone.generators[0].set_state(torch.Generator().manual_seed(7 * 1_000_003 + c).get_state())
        for frame in frames:
            torch.testing.assert_close(alone.step(), frame[piece], rtol=0, atol=1e-10)


def test_checkpoint_resume_is_bit_identical(tmp_path):
    model = random_model()
    batch = build_chain_batch(SEQUENCES, TYPES, 4)
    history = initial_history(batch, SMALL.history)
    checks = RolloutChecks(collision_nm=0.0)
    straight = Propagator(model, batch, history, seed=3, checks=checks)
    frames = [straight.step() for _ in range(10)]
    first = Propagator(model, batch, history, seed=3, checks=checks)
    first.run(5, checkpoint_path=tmp_path / "rollout.ckpt", checkpoint_interval=5)
    resumed = Propagator(model, batch, history, seed=99, checks=checks)
    resumed.load_checkpoint(tmp_path / "rollout.ckpt")
    assert resumed.step_count == 5
    for frame in frames[5:]:
        assert torch.equal(resumed.step(), frame)


def test_exported_dynamics_equals_the_training_model(tmp_path):
    model = random_model()
    batch = build_chain_batch(SEQUENCES, TYPES, 4)
    history = initial_history(batch, SMALL.history)
    path = tmp_path / "dynamics.pt"
    torch.jit.save(torch.jit.script(model), str(path))
    loaded = torch.jit.load(str(path))
    embedding = model.bead_embedding(batch.monomer_types, batch.fine_edges, batch.assignment, batch.n_beads)
    scripted_embedding = loaded.bead_embedding(batch.monomer_types, batch.fine_edges, batch.assignment, batch.n_beads)
    torch.testing.assert_close(scripted_embedding, embedding, rtol=0, atol=1e-12)
    for got, want in zip(loaded.delta_distribution(history, embedding, batch.pairs, batch.bonded),
                         model.delta_distribution(history, embedding, batch.pairs, batch.bonded)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_pair_layer_equals_the_linear_layer_on_concatenated_pair_features():
    from openmm_cg.dynamics.model import _pair_linear

    torch.manual_seed(0)
    layer = torch.nn.Linear(3 * 5, 7).double()
    h, edges = torch.randn(6, 5, dtype=torch.float64), torch.randn(9, 5, dtype=torch.float64)
    receivers, senders = torch.randint(0, 6, (9,)), torch.randint(0, 6, (9,))
    torch.testing.assert_close(_pair_linear(layer.weight, layer.bias, h, receivers, senders, edges),
                               layer(torch.cat([h[receivers], h[senders], edges], dim=-1)), rtol=0, atol=1e-13)


def test_rescript_rebuilds_the_same_exported_model(tmp_path):
    from openmm_cg.dynamics.model import DYNAMICS_KIND
    from openmm_cg.dynamics.rollout import load_dynamics
    from openmm_cg.export import rescript, save_model

    model = random_model()
    batch = build_chain_batch(SEQUENCES, TYPES, 4)
    history = initial_history(batch, SMALL.history)
    metadata = {"kind": DYNAMICS_KIND, "step_ps": 10.0, "monomer_types": TYPES, "model_config": asdict(SMALL)}
    path = save_model(model, metadata, tmp_path / "dynamics.pt", "float64")
    before = load_dynamics(path)[0]
    rescript(path, kind=DYNAMICS_KIND)
    after, metadata_after = load_dynamics(path)
    assert metadata_after["step_ps"] == 10.0 and metadata_after["dtype"] == "float64"
    embedding = before.bead_embedding(batch.monomer_types, batch.fine_edges, batch.assignment, batch.n_beads)
    for got, want in zip(after.delta_distribution(history, embedding, batch.pairs, batch.bonded),
                         before.delta_distribution(history, embedding, batch.pairs, batch.bonded)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    with pytest.raises(ModelFileError, match="not an openmm-cg potential"):
        rescript(path)


def test_mean_rotates_with_the_chain_and_ignores_translations():
    model = random_model()
    batch = build_chain_batch(SEQUENCES, TYPES, 4)
    history = initial_history(batch, SMALL.history, seed=1)
    embedding = model.bead_embedding(batch.monomer_types, batch.fine_edges, batch.assignment, batch.n_beads)
    with torch.no_grad():
        mean, std = model.delta_distribution(history, embedding, batch.pairs, batch.bonded)
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    moved = history @ q.T + torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    mean2, std2 = model.delta_distribution(moved, embedding, batch.pairs, batch.bonded)
    torch.testing.assert_close(mean2, mean @ q.T, rtol=0, atol=1e-10)
    torch.testing.assert_close(std2, std, rtol=0, atol=1e-10)
    assert float(mean.detach().abs().max()) > 1e-4  # not trivially zero

    score = ScoreNetwork(SMALL, len(TYPES)).double()
    e = score.bead_embedding(batch.monomer_types, batch.fine_edges, batch.assignment, batch.n_beads)
    sigma = torch.tensor(0.05, dtype=torch.float64)
    s1 = score(history[-1], sigma, e, batch.pairs, batch.bonded)
    s2 = score(moved[-1], sigma, e, batch.pairs, batch.bonded)
    torch.testing.assert_close(s2, s1 @ q.T, rtol=0, atol=1e-9)


def test_bad_input_is_refused_and_collisions_stop_with_the_last_state_saved(tmp_path):
    model = random_model()
    batch = build_chain_batch(SEQUENCES, TYPES, 4)
    history = initial_history(batch, SMALL.history)
    with pytest.raises(InputError, match="last 3 frames; only 2"):
        Propagator(model, batch, history[:2], seed=0)
    with pytest.raises(InputError, match="beads"):
        Propagator(model, batch, history[:, :-1], seed=0)
    with pytest.raises(InputError, match="clustering this model was built for"):
        build_chain_batch(SEQUENCES[:1], TYPES, 4, assignments=[np.zeros(len(SEQUENCES[0]), dtype=int)])
    with pytest.raises(InputError, match="does not know"):
        build_chain_batch(["ABXA"], TYPES, 2)

    # A model that drives every bead to the origin: the first step that brings two beads together stops.
    class Collapse(ConstantAcceleration):
        def delta_distribution(self, history, embedding, pairs, bonded):
            return -history[-1] - (history[-1] - history[-2]), torch.zeros(history.shape[1], dtype=torch.float64)

    propagator = Propagator(Collapse([0.0, 0.0, 0.0], 10.0), batch, history[-2:], seed=0,
                            checks=RolloutChecks(collision_nm=0.15, max_step_nm=100.0))
    before = propagator.positions_nm.clone()
    with pytest.raises(RolloutStopped, match="learned step 1 .*chain 0: .*collided.*saved to"):
        propagator.step(checkpoint_path=tmp_path / "last_good.ckpt")
    assert torch.equal(propagator.positions_nm, before) and propagator.step_count == 0
    saved = torch.load(tmp_path / "last_good.ckpt", weights_only=False)
    assert torch.equal(saved["history_nm"][-1], before)

    # Not stopping: a chain that fails is recorded and frozen, the others go on unchanged.
    first = batch.chain_slices()[0]

    class CollapseFirst(ConstantAcceleration):
        def delta_distribution(self, history, embedding, pairs, bonded):
            delta = torch.zeros_like(history[-1])
            delta[first] = -history[-1][first] - (history[-1][first] - history[-2][first])
            return delta, torch.zeros(history.shape[1], dtype=torch.float64)

    propagator = Propagator(CollapseFirst([0.0, 0.0, 0.0], 10.0), batch, history[-2:], seed=0,
                            checks=RolloutChecks(collision_nm=0.15, max_step_nm=100.0, stop_on_failure=False))
    propagator.run(3)
    assert list(propagator.failures) == [0] and propagator.failures[0][0] == 1
    assert "collided" in propagator.failures[0][1]
    assert torch.equal(propagator.positions_nm[first], history[-1][first])
    rest = slice(first.stop, None)
    torch.testing.assert_close(propagator.positions_nm[rest], history[-1][rest] + 3 * (history[-1][rest] - history[-2][rest]))


def test_score_refinement_moves_frames_toward_higher_density():
    """With an exact score (a harmonic well around a reference frame), refinement pulls a perturbed
    frame back toward the reference."""
    batch = build_chain_batch(SEQUENCES[:1], TYPES, 4)
    reference = torch.tensor(zigzag(batch.n_beads))

    class WellScore(torch.nn.Module):
        def bead_embedding(self, types, edges, assignment, n_beads: int):
            return torch.zeros(n_beads, 1, dtype=torch.float64)

        def forward(self, x, sigma, embedding, pairs, bonded):
            return -(x - reference) / (0.05 ** 2 + sigma ** 2)

    model = random_model()
    propagator = Propagator(model, batch, initial_history(batch, SMALL.history), seed=0)
    noisy = reference + 0.1 * torch.randn(reference.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    refined = score_refiner(WellScore())(noisy, propagator)
    assert float((refined - reference).norm()) < 0.8 * float((noisy - reference).norm())


def test_training_recovers_a_known_stochastic_propagator(tmp_path):
    """Synthetic chains whose beads follow delta = -0.5 v dt + N(0, 0.02 nm): maximum likelihood must
    find that mean and that spread, and the exported model must drive a rollout."""
    from openmm_cg.dynamics.data import ChainData, PolymerCGData
    from openmm_cg.dynamics.rollout import check_step_size, load_dynamics
    from openmm_cg.dynamics.train import DynamicsTrainConfig
    from openmm_cg.workflows import train_propagator

    rng = np.random.default_rng(0)
    chains = []
    for c in range(12):
        sequence = "".join(rng.choice(TYPES, size=int(rng.integers(8, 14))))
        n_beads = int(cluster_bond_graph(len(sequence), [(k, k + 1) for k in range(len(sequence) - 1)], 4).max()) + 1
        x = np.empty((400, n_beads, 3))
        x[0] = x[1] = zigzag(n_beads)
        for t in range(1, 399):
            x[t + 1] = 2 * x[t] - x[t - 1] - 0.5 * (x[t] - x[t - 1]) + 0.02 * rng.normal(size=(n_beads, 3))
        assignment = cluster_bond_graph(len(sequence), [(k, k + 1) for k in range(len(sequence) - 1)], 4)
        chains.append(ChainData.from_frames(sequence, assignment, x, np.zeros_like(x), 100.0, 300.0))
    data = PolymerCGData(chains, frame_interval_ps=2.0, temperature_K=300.0, monomer_types=TYPES, particles_per_bead=4)
    data.save(tmp_path / "chains.h5")
    config = DynamicsTrainConfig(data=str(tmp_path / "chains.h5"), output=str(tmp_path / "run"), stride_frames=1,
                                 model=DynamicsConfig(history=3, n_features=16, n_fine_layers=1, n_layers=1, n_rbf=8),
                                 input_noise_nm=0.0, windows_per_batch=16, windows_per_epoch=1024,
                                 validation_windows=256, max_epochs=5, learning_rate=3e-3)
    summary = train_propagator(config, progress=False)
    model, metadata = load_dynamics(tmp_path / "run" / "dynamics.pt")
    assert metadata["step_ps"] == 2.0 and metadata["history"] == 3 and metadata["particles_per_bead"] == 4
    test = [chains[i] for i in summary["test_chains"]]
    batch = build_chain_batch([c.sequence for c in test], TYPES, 4)
    history = torch.tensor(np.concatenate([c.positions_nm[200:203] for c in test], axis=1), dtype=torch.float64)
    embedding = model.bead_embedding(batch.monomer_types, batch.fine_edges, batch.assignment, batch.n_beads)
    mean, std = model.delta_distribution(history, embedding, batch.pairs, batch.bonded)
    expected = -0.5 * (history[-1] - history[-2])
    # A model that ignored the velocity would be off by 1.0 of the signal; measured 0.20 after 5 short epochs.
    assert float(torch.sqrt(((mean - expected) ** 2).mean())) < 0.3 * float(torch.sqrt((expected ** 2).mean()))
    assert float(std.mean()) == pytest.approx(0.02, rel=0.15)

    check_step_size(metadata, 2.0, 1)
    with pytest.raises(InputError, match="trained with steps of 2 ps"):
        check_step_size(metadata, 1.0, 1)
    propagator = Propagator(model, batch, history, seed=0, checks=RolloutChecks(collision_nm=0.0))
    propagator.run(20)
    assert propagator.step_count == 20 and torch.isfinite(propagator.positions_nm).all()


@pytest.mark.parametrize("fmt", ["dcd", "h5"])
def test_rollout_writes_trajectories_and_resumes_identically(tmp_path, fmt):
    import mdtraj

    from openmm_cg.dynamics.model import DYNAMICS_KIND
    from openmm_cg.dynamics.rollout import RolloutConfig, rollout
    from openmm_cg.export import save_model
    from openmm_cg.simulation.trajectory import load_run_frames

    model = random_model()
    metadata = {"kind": DYNAMICS_KIND, "format_version": 1, "step_ps": 10.0, "history": SMALL.history,
                "particles_per_bead": 4, "monomer_types": TYPES, "cutoff_nm": SMALL.cutoff_nm}
    path = save_model(model, metadata, tmp_path / "dynamics.pt", "float64")
    batch = build_chain_batch(SEQUENCES, TYPES, 4)
    history = initial_history(batch, SMALL.history).numpy()
    config = RolloutConfig(steps=12, seed=5, report_interval=2, checkpoint_interval=4, format=fmt, collision_nm=0.0)
    straight = rollout(path, SEQUENCES, history, config, tmp_path / "straight", progress=False)
    assert straight["steps"] == 12 and straight["simulated_ps"] == 120.0
    full = mdtraj.load(str(tmp_path / "straight" / f"trajectory.{fmt}"), top=str(tmp_path / "straight" / "topology.pdb"))
    assert full.n_frames == 6 and full.n_atoms == batch.n_beads and full.topology.n_chains == 3
    assert full.topology.n_bonds == int(batch.bonded.sum())
    # The folder reader of simulations reads rollouts too: frames every 2 x 10 ps, so 40 ps skips two.
    positions, boxes = load_run_frames(tmp_path / "straight", skip_ps=40.0)
    assert boxes is None
    np.testing.assert_allclose(positions, full.xyz[2:], atol=1e-6)

    # Interrupted after 8 steps (checkpoint at 8), then resumed: the same frames.
    rollout(path, SEQUENCES, history, RolloutConfig(**{**config.__dict__, "steps": 8}), tmp_path / "resumed",
            progress=False)
    resumed = rollout(path, SEQUENCES, history, config, tmp_path / "resumed", progress=False)
    assert resumed["steps"] == 12
    again = mdtraj.load(str(tmp_path / "resumed" / f"trajectory.{fmt}"), top=str(tmp_path / "resumed" / "topology.pdb"))
    np.testing.assert_allclose(again.xyz, full.xyz, atol=1e-6)
    from openmm_cg.simulation.trajectory import frame_times_ps

    np.testing.assert_allclose(frame_times_ps(tmp_path / "resumed" / f"trajectory.{fmt}"), 20.0 * np.arange(1, 7),
                               rtol=1e-6)  # a frame every 2 steps of 10 ps, through the resume
    with pytest.raises(InputError, match="other settings"):
        rollout(path, SEQUENCES, history, RolloutConfig(**{**config.__dict__, "seed": 6}), tmp_path / "resumed",
                progress=False)


def test_state_goes_to_and_from_an_openmm_context():
    from openmm_cg._runtime import openmm
    from openmm import app, unit

    from openmm_cg.dynamics.rollout import bead_topology, history_from_openmm, to_context

    batch = build_chain_batch(SEQUENCES[:2], TYPES, 4)
    system = openmm.System()
    for _ in range(batch.n_beads):
        system.addParticle(400.0)
    bonds = openmm.HarmonicBondForce()
    for (i, j), bonded in zip(batch.pairs.tolist(), batch.bonded.tolist()):
        if bonded:
            bonds.addBond(i, j, 0.6, 500.0)
    system.addForce(bonds)
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, 0.01 * unit.picosecond)
    simulation = app.Simulation(bead_topology(batch), system, integrator, openmm.Platform.getPlatformByName("Reference"))
    simulation.context.setPositions(initial_history(batch, 1)[0].numpy())
    metadata = {"history": SMALL.history, "step_ps": 0.1}
    frames = history_from_openmm(simulation, metadata)
    assert frames.shape == (SMALL.history, batch.n_beads, 3) and simulation.currentStep == 20
    with pytest.raises(InputError, match="does not divide"):
        history_from_openmm(simulation, {"history": 2, "step_ps": 0.015})

    propagator = Propagator(random_model(), batch, torch.as_tensor(frames), seed=0)
    propagator.dynamics.step_ps.fill_(0.1)
    to_context(propagator, simulation.context)
    state = simulation.context.getState(getPositions=True, getVelocities=True)
    np.testing.assert_allclose(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer), frames[-1], atol=1e-12)
    np.testing.assert_allclose(state.getVelocities(asNumpy=True).value_in_unit(unit.nanometer / unit.picosecond),
                               (frames[-1] - frames[-2]) / 0.1, atol=1e-10)
