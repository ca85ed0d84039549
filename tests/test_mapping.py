"""CG maps and force maps, checked by hand on small molecules, and their errors."""
import numpy as np
import pytest

from openmm_cg._runtime import openmm
from openmm import app
from openmm_cg.errors import InputError
from openmm_cg.mapping.cgmap import ALANINE_DIPEPTIDE_BACKBONE_CB, build_mapping, map_and_check, mapping_from_spec
from openmm_cg.topology import bonds_array

# Methanol: C (0) bonded to O (1) and H1-H3 (2-4); O bonded to HO (5).
MASSES = {"C": 12.01078, "O": 15.99943, "H": 1.007947}


def methanol_topology() -> app.Topology:
    topology = app.Topology()
    residue = topology.addResidue("MOH", topology.addChain())
    atoms = [topology.addAtom(name, app.Element.getBySymbol(symbol), residue)
             for name, symbol in (("C", "C"), ("O", "O"), ("H1", "H"), ("H2", "H"), ("H3", "H"), ("HO", "H"))]
    for i, j in ((0, 1), (0, 2), (0, 3), (0, 4), (1, 5)):
        topology.addBond(atoms[i], atoms[j])
    return topology


def methanol_positions() -> np.ndarray:
    return np.array([[0.0, 0.0, 0.0], [0.143, 0.0, 0.0], [-0.036, 0.103, 0.0], [-0.036, -0.051, 0.089],
                     [-0.036, -0.051, -0.089], [0.175, 0.091, 0.0]])


def test_center_of_mass_map_by_hand():
    topology = methanol_topology()
    mapping = build_mapping(topology, ["all"], method="com", bead_names=["MeOH"])
    x = methanol_positions()
    masses = np.array([MASSES[s] for s in "COHHHH"])
    expected = (masses[:, None] * x).sum(0) / masses.sum()
    np.testing.assert_allclose(mapping.map_positions(x)[0], expected, atol=1e-5)
    forces = np.arange(18, dtype=float).reshape(6, 3)
    np.testing.assert_allclose(mapping.map_forces(forces)[0], forces.sum(0))
    assert mapping.masses_amu[0] == pytest.approx(masses.sum(), rel=1e-5)


def test_slice_map_aggregates_bonded_hydrogens_by_hand():
    topology = methanol_topology()
    mapping = build_mapping(topology, ["name C", "name O"])
    assert mapping.force_groups() == [[0, 2, 3, 4], [1, 5]]
    assert mapping.position_groups() == [[0], [1]]
    x = methanol_positions()
    np.testing.assert_allclose(mapping.map_positions(x), x[[0, 1]])
    forces = np.arange(18, dtype=float).reshape(6, 3)
    np.testing.assert_allclose(mapping.map_forces(forces), [forces[[0, 2, 3, 4]].sum(0), forces[[1, 5]].sum(0)])
    assert mapping.masses_amu == pytest.approx([MASSES["C"] + 3 * MASSES["H"], MASSES["O"] + MASSES["H"]], rel=1e-5)
    assert mapping.cg_bonds.tolist() == [[0, 1]]
    # Both maps satisfy the consistency condition of force matching: force_weights @ position_weights.T = I.
    np.testing.assert_allclose(mapping.force_weights @ mapping.position_weights.T, np.eye(2))


def test_cg_bonds_span_unmapped_atoms():
    topology = methanol_topology()
    mapping = build_mapping(topology, ["name H1", "name HO"], aggregate_hydrogens=False)
    assert mapping.cg_bonds.tolist() == [[0, 1]]  # H1-C-O-HO: C and O belong to no bead


def test_constraint_forces_cancel_in_the_alanine_dipeptide_force_map():
    from openmm_cg.data.reference import ReferenceConfig, build_system

    system, topology, _ = build_system(ReferenceConfig(constraints="HBonds"))
    mapping = mapping_from_spec(topology, "alanine_dipeptide")
    mapping.check_constraints(system)
    # An equal-and-opposite pair force along every constraint maps to zero bead force.
    rng = np.random.default_rng(0)
    for k in range(system.getNumConstraints()):
        i, j, _ = system.getConstraintParameters(k)
        forces = np.zeros((mapping.n_atoms, 3))
        f = rng.normal(size=3)
        forces[i], forces[j] = f, -f
        np.testing.assert_allclose(mapping.map_forces(forces), 0.0, atol=1e-12)
    # Without hydrogen aggregation the constraint forces would leak into beads: refused.
    leaky = mapping_from_spec(topology, {"selections": ALANINE_DIPEPTIDE_BACKBONE_CB, "aggregate_hydrogens": False})
    with pytest.raises(InputError, match="crosses beads"):
        leaky.check_constraints(system)


def test_mapping_errors():
    topology = methanol_topology()
    with pytest.raises(InputError, match="selects no atoms"):
        build_mapping(topology, ["name XX"])
    with pytest.raises(InputError, match="selected by bead 0 and bead 1"):
        build_mapping(topology, ["name C", "name C"])
    with pytest.raises(InputError, match="more than once"):
        build_mapping(topology, [[0, 0]], method="cog")
    with pytest.raises(InputError, match="exactly one atom"):
        build_mapping(topology, ["name C or name O"])
    with pytest.raises(InputError, match="cannot parse"):
        build_mapping(topology, ["name C and and"])
    with pytest.raises(InputError, match="method"):
        build_mapping(topology, ["name C"], method="centroid")


def test_bad_trajectory_input_is_refused():
    topology = methanol_topology()
    mapping = build_mapping(topology, ["name C", "name O"])
    bonds = bonds_array(topology)
    x = np.repeat(methanol_positions()[None], 4, axis=0)
    forces = np.zeros_like(x)
    map_and_check(mapping, x, forces, bonds, "ok")
    with pytest.raises(InputError, match="different shapes"):
        map_and_check(mapping, x, forces[:3], bonds, "traj")
    bad = forces.copy()
    bad[2, 1, 0] = np.nan
    with pytest.raises(InputError, match=r"NaN/Inf in frames \[2\]"):
        map_and_check(mapping, x, bad, bonds, "traj")
    with pytest.raises(InputError, match="Ångström"):
        map_and_check(mapping, x * 10.0, forces, bonds, "traj")
    with pytest.raises(InputError, match="expects"):
        mapping.map_positions(x[:, :5])


def test_mapping_dict_roundtrip():
    mapping = build_mapping(methanol_topology(), ["name C", "name O"])
    again = type(mapping).from_dict(mapping.to_dict())
    np.testing.assert_array_equal(again.position_weights, mapping.position_weights)
    np.testing.assert_array_equal(again.force_weights, mapping.force_weights)
    assert again.cg_topology.getNumAtoms() == 2 and again.bead_names == ["C", "O"]
