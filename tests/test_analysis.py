"""Divergences, basins and dihedrals used to judge CG models."""
import numpy as np
import pytest

from openmm_cg.analysis.ramachandran import (PhiPsi, basin_populations, compare, histogram, js_divergence,
                                             phi_psi, split_halves)


def test_js_divergence_limits():
    p = np.array([0.5, 0.5, 0.0, 0.0])
    q = np.array([0.0, 0.0, 0.5, 0.5])
    assert js_divergence(p, p) == 0.0
    assert js_divergence(p, q) == pytest.approx(np.log(2))
    r = np.array([0.4, 0.6, 0.0, 0.0])
    assert js_divergence(p, r) == pytest.approx(js_divergence(r, p))
    assert 0 < js_divergence(p, r) < 0.02


def test_basins_and_halves():
    phi = np.radians([-60, -120, 60, -70])
    psi = np.radians([-40, 140, 40, 160])
    populations = basin_populations(PhiPsi(phi, psi, np.array([0, 0, 1, 1])))
    assert populations == {"alpha_R": 0.25, "beta": 0.5, "alpha_L": 0.25}
    a, b = split_halves(PhiPsi(phi, psi, np.array([0, 0, 1, 1])))
    assert len(a.phi) == 2 and set(a.groups) == {0} and set(b.groups) == {1}


def test_cg_dihedrals_equal_all_atom_dihedrals(ala2_reference, ala2_dataset):
    from openmm_cg.data.datasets import read_reference
    from openmm_cg.data.reference import seed_path

    directory, _ = ala2_reference
    _, dataset = ala2_dataset
    all_atom = read_reference(seed_path(directory, 0))
    aa = phi_psi(all_atom.positions_nm, all_atom.topology)
    cg = phi_psi(dataset.positions_nm[dataset.trajectory_index == 0], dataset.mapping.cg_topology)
    np.testing.assert_allclose(cg.phi, aa.phi, atol=1e-5)
    np.testing.assert_allclose(cg.psi, aa.psi, atol=1e-5)


def test_compare_reports_noise_floor(ala2_dataset):
    _, dataset = ala2_dataset
    angles = phi_psi(dataset.positions_nm, dataset.mapping.cg_topology, groups=dataset.trajectory_index)
    metrics = compare(angles, angles, bins=36)
    assert metrics["js_cg_vs_aa"] == 0.0 and metrics["js_aa_half_vs_half"] > 0.0
    assert sum(metrics["basin_populations"]["aa"].values()) == pytest.approx(1.0)
    assert histogram(angles, 36).sum() == pytest.approx(1.0)


# -- partial RDFs of periodic (liquid, mixture) simulations ------------------------------------------------------

def _mixture_topology(n_a: int, n_b: int, box_nm: float):
    """n_a beads "SOLV:W" then n_b beads "ION:NA", one residue each, in a cubic box."""
    from openmm_cg._runtime import openmm  # noqa: F401
    from openmm import app, unit

    topology = app.Topology()
    chain = topology.addChain()
    for residue, name, element, count in (("SOLV", "W", "O", n_a), ("ION", "NA", "Na", n_b)):
        for _ in range(count):
            topology.addAtom(name, app.Element.getBySymbol(element), topology.addResidue(residue, chain))
    topology.setPeriodicBoxVectors(np.eye(3) * box_nm * unit.nanometer)
    return topology


def test_bead_type_keys_of_openmm_and_mdtraj_topologies():
    import mdtraj

    from openmm_cg.topology import bead_type_keys

    topology = _mixture_topology(2, 1, 2.0)
    expected = ["SOLV:W", "SOLV:W", "ION:NA"]
    assert bead_type_keys(topology) == expected
    assert bead_type_keys(mdtraj.Topology.from_openmm(topology)) == expected


def test_partial_rdfs_of_an_ideal_binary_mixture_are_one():
    """Uniform random positions: every partial g(r), like (N (N-1) / 2 pairs) and unlike (N_A N_B pairs), is 1.
    Tolerance: 0.015 on the mean over 0.5-1.5 nm (~190k pair counts or more per type pair, statistical error
    < 0.3 %), 0.1 per 0.05 nm bin there; a like-pair normalisation by N^2 / 2 would give 0.95 for B-B."""
    from openmm_cg.analysis.liquid import partial_rdfs
    from openmm_cg.errors import InputError

    rng = np.random.default_rng(0)
    n_a, n_b, box, frames = 60, 20, 3.0, 2000
    types = ["A"] * n_a + ["B"] * n_b
    order = rng.permutation(n_a + n_b)  # types interleaved, not in blocks
    types = [types[k] for k in order]
    positions = rng.uniform(0.0, box, size=(frames, n_a + n_b, 3))
    boxes = np.broadcast_to(np.eye(3) * box, (frames, 3, 3))
    rdfs = partial_rdfs(positions, boxes, types, 1.5, n_bins=30)
    assert sorted(rdfs) == ["A-A", "A-B", "B-B"]
    for key, rdf in rdfs.items():
        window = rdf.r_nm > 0.5
        assert abs(rdf.g[window].mean() - 1.0) < 0.015, (key, rdf.g[window].mean())
        assert np.abs(rdf.g[window] - 1.0).max() < 0.1, key
        assert rdf.n_frames == frames
    with pytest.raises(InputError, match="bead types"):
        partial_rdfs(positions, boxes, types[:-1], 1.5)
    with pytest.raises(InputError, match="half the smallest box"):
        partial_rdfs(positions, boxes, types, 1.6)
    with pytest.raises(InputError, match="boxes"):
        partial_rdfs(positions, boxes[:-1], types, 1.5)


def test_partial_rdf_peaks_of_a_lattice_with_bound_partners():
    """A beads on a simple cubic lattice (spacing 0.5 nm), a B bead 0.2 nm from each A along (1, 1, 1):
    the first A-B peak lies at 0.2 nm, the first A-A and B-B peaks at the lattice spacing."""
    from openmm_cg.analysis.liquid import first_peak, partial_rdfs

    rng = np.random.default_rng(1)
    spacing, cells, offset = 0.5, 4, 0.2
    lattice = np.stack(np.meshgrid(*[np.arange(cells)] * 3, indexing="ij"), -1).reshape(-1, 3) * spacing
    partners = lattice + offset * np.ones(3) / np.sqrt(3.0)
    frames = np.concatenate([lattice, partners])[None] + rng.normal(scale=0.003, size=(5, 2 * len(lattice), 3))
    types = ["A"] * len(lattice) + ["B"] * len(lattice)
    boxes = np.broadcast_to(np.eye(3) * spacing * cells, (5, 3, 3))
    rdfs = partial_rdfs(frames, boxes, types, 0.95, n_bins=190)
    width = 0.005
    for key, expected in (("A-B", offset), ("A-A", spacing), ("B-B", spacing)):
        r, g = first_peak(rdfs[key])
        assert abs(r - expected) <= width, (key, r)
        assert g > 10.0, key
    assert rdfs["A-A"].g[rdfs["A-A"].r_nm < spacing - 0.05].max() == 0.0  # nothing inside the lattice spacing


def _write_simulation(folder, topology, positions, boxes):
    """A simulation folder as ``openmm-cg simulate`` writes it: topology.pdb + trajectory.dcd (TrajectoryWriter)."""
    from openmm import app, unit

    from openmm_cg.simulation.trajectory import TrajectoryWriter

    folder.mkdir()
    with open(folder / "topology.pdb", "w") as handle:
        app.PDBFile.writeFile(topology, positions[0] * 10.0 * unit.angstrom, handle)
    writer = TrajectoryWriter(folder / "trajectory.dcd", topology, 0.004, interval=25)
    for k, frame in enumerate(positions):
        writer.write(frame, 0.1 * (k + 1), None if boxes is None else boxes[k])
    writer.close()


def test_analyze_writes_partial_rdfs_of_a_periodic_simulation(tmp_path):
    import json

    from openmm_cg.data.datasets import CGDataset
    from openmm_cg.errors import InputError
    from openmm_cg.mapping.cgmap import build_mapping
    from openmm_cg.simulation.trajectory import load_run_frames
    from openmm_cg.workflows import analyze

    rng = np.random.default_rng(2)
    n_a, n_b, box, frames = 24, 8, 2.0, 20
    topology = _mixture_topology(n_a, n_b, box)
    positions = rng.uniform(0.0, box, size=(frames, n_a + n_b, 3))
    boxes = np.broadcast_to(np.eye(3) * box, (frames, 3, 3))
    _write_simulation(tmp_path / "sim", topology, positions, boxes)
    # topology.pdb (beside a DCD) cuts residue names to 3 characters: the simulation's types read "SOL:W"
    pairs = {"ION:NA-ION:NA", "ION:NA-SOL:W", "SOL:W-SOL:W"}

    metrics = analyze(None, [tmp_path / "sim"], tmp_path / "analysis", bins=40)
    assert (tmp_path / "analysis" / "rdf.png").stat().st_size > 0
    assert json.loads((tmp_path / "analysis" / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert metrics["n_frames"] == frames and metrics["types"] == {"SOL:W": n_a, "ION:NA": n_b}
    assert set(metrics["pairs"]) == pairs and metrics["r_max_nm"] == pytest.approx(1.0, abs=2e-3)
    for entry in metrics["pairs"].values():
        assert len(entry["r_nm"]) == len(entry["g"]) == 40 and "rdf_error" not in entry
        assert entry["first_peak_g"] == entry["g"][entry["r_nm"].index(entry["first_peak_r_nm"])] > 1.0

    # against a CG reference dataset of the same frames: every pair compared (in the reference's full type
    # keys, to which the PDB's shortened names are matched), no error
    x, b = load_run_frames(tmp_path / "sim")
    mapping = build_mapping(topology, [[k] for k in range(n_a + n_b)])
    CGDataset(x.astype(np.float32), np.zeros_like(x, dtype=np.float32), np.zeros(frames, dtype=np.int32), 300.0,
              mapping, ["mixture"], {}, b).save(tmp_path / "cg.h5")
    compared = analyze(tmp_path / "cg.h5", [tmp_path / "sim"], tmp_path / "compared", bins=40, r_max_nm=0.8)
    assert set(compared["pairs"]) == {"ION:NA-ION:NA", "ION:NA-SOLV:W", "SOLV:W-SOLV:W"}
    assert compared["types"] == {"SOLV:W": n_a, "ION:NA": n_b} and compared["r_max_nm"] == 0.8
    for entry in compared["pairs"].values():
        assert entry["rdf_error"] < 1e-9 and entry["reference"]["g"] == entry["g"]

    # a non-periodic simulation still needs the (Ramachandran) reference
    molecule = _mixture_topology(2, 1, box)
    molecule.setPeriodicBoxVectors(None)
    _write_simulation(tmp_path / "molecule", molecule, positions[:, :3], None)
    with pytest.raises(InputError, match="not periodic"):
        analyze(None, [tmp_path / "molecule"], tmp_path / "nothing")
