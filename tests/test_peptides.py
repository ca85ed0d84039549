"""Peptides from a sequence (all-atom, implicit solvent), and the protein backbone mapping."""
import json
import subprocess
import sys

import mdtraj
import numpy as np
import pytest
import torch  # noqa: F401  (before openmm's plugins)
from openmm import app, unit

import openmm
from openmm_cg.data.peptides import ONE_LETTER, build_peptide, parse_sequence, sequence_name
from openmm_cg.data.reference import ReferenceConfig, build_system
from openmm_cg.errors import InputError
from openmm_cg.mapping.cgmap import mapping_from_spec, protein_backbone_mapping
from openmm_cg.topology import bead_type_keys, resolve_bead_types

# Atoms of each amino acid with all hydrogens at pH 7 (Arg, Lys charged, Asp, Glu charged, His neutral).
ATOMS = {"ALA": 10, "ARG": 24, "ASN": 14, "ASP": 12, "CYS": 11, "GLN": 17, "GLU": 15, "GLY": 7, "HIS": 17,
         "ILE": 19, "LEU": 19, "LYS": 22, "MET": 17, "PHE": 20, "PRO": 14, "SER": 11, "THR": 14, "TRP": 24,
         "TYR": 21, "VAL": 16}
CAP_ATOMS = 12  # ACE (CH3, 3 H, C, O) + NME (N, H, C, 3 H)
FORCEFIELD = ["amber14-all.xml", "implicit/gbn2.xml"]


def test_sequences_parse_in_one_and_three_letter_codes():
    assert parse_sequence("AY") == ["ALA", "TYR"]
    assert parse_sequence("ala-tyr") == parse_sequence("ACE ALA TYR NME") == ["ALA", "TYR"]
    assert parse_sequence("AYW") == ["ALA", "TYR", "TRP"]  # three letters that are not a three-letter code
    assert parse_sequence("TRP") == ["TRP"]
    assert sequence_name(["ALA", "TYR"]) == "AY"


@pytest.mark.parametrize("bad, message", [("", "empty"), ("   ", "empty"), ("AXB", r"\['B', 'X'\]"),
                                          ("ALA-FOO", "FOO"), ("ACE-NME", "no amino acid"), ("ALA-Y", "'Y'")])
def test_bad_sequences_are_refused_with_the_codes(bad, message):
    with pytest.raises(InputError, match=message):
        parse_sequence(bad)


def test_every_amino_acid_builds_with_its_atoms_and_a_finite_minimised_energy():
    forcefield = app.ForceField(*FORCEFIELD)
    platform = openmm.Platform.getPlatformByName("CPU")
    for one, three in sorted(ONE_LETTER.items()):
        topology, positions = build_peptide(one)
        assert [r.name for r in topology.residues()] == ["ACE", three, "NME"]
        assert topology.getNumAtoms() == CAP_ATOMS + ATOMS[three], three
        system = forcefield.createSystem(topology, nonbondedMethod=app.NoCutoff, constraints=app.HBonds)
        context = openmm.Context(system, openmm.VerletIntegrator(0.001), platform)
        context.setPositions(positions)
        openmm.LocalEnergyMinimizer.minimize(context, maxIterations=200)
        energy = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        # A clash or a wrong chirality/protonation shows as a large positive energy; capped residues in GBn2
        # minimise to between about -1100 (charged Asp) and +50 kJ/mol.
        assert np.isfinite(energy) and -2000 < energy < 200, (three, energy)
        chiral = mdtraj.Topology.from_openmm(topology)
        if three != "GLY":  # an L-amino acid has the handedness of openmmtools' alanine dipeptide (positive)
            n, ca, c, cb = (chiral.select(f"resname {three} and name {a}")[0] for a in ("N", "CA", "C", "CB"))
            x = context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
            volume = np.dot(x[n] - x[ca], np.cross(x[c] - x[ca], x[cb] - x[ca]))
            assert volume > 0, f"{three} is not the L enantiomer"


def test_a_built_peptide_is_reproducible_to_the_bit():
    _, first = build_peptide("YYDPETGTWY")
    _, second = build_peptide("YYDPETGTWY")
    assert np.array_equal(first, second)


def test_backbone_mapping_of_a_hand_checked_dipeptide():
    topology, _ = build_peptide("GP")
    mapping = protein_backbone_mapping(topology)
    md_top = mdtraj.Topology.from_openmm(topology)
    atom = {(a.residue.name, a.name): a.index for a in md_top.atoms}
    expected = [("ACE", "CH3", "CH3", "ACE:CH3"), ("ACE", "C", "C", "*:C"),
                ("GLY", "N", "N", "*:N"), ("GLY", "CA", "CA", "GLY:CA"), ("GLY", "C", "C", "*:C"),
                ("PRO", "N", "N", "PRO:N"), ("PRO", "CA", "CA", "*:CA"), ("PRO", "C", "C", "*:C"),
                ("PRO", "CB", "CB", "PRO:CB"), ("NME", "N", "N", "*:N"), ("NME", "C", "CH3", "NME:CH3")]
    assert mapping.bead_names == [name for _, _, name, _ in expected]
    assert [mapping.type_names[t] for t in mapping.bead_types] == [t for *_, t in expected]
    assert mapping.position_groups() == [[atom[(res, name)]] for res, name, _, _ in expected]
    # Forces: each bead atom with its own hydrogens; Pro's N has none, Gly's CA two.
    hydrogens = [len(group) - 1 for group in mapping.force_groups()]
    assert hydrogens == [3, 0, 1, 2, 0, 0, 1, 0, 2, 1, 3]
    masses = {"C": 12.0107, "N": 14.0067, "H": 1.00794}
    assert mapping.masses_amu[3] == pytest.approx(masses["C"] + 2 * masses["H"], rel=1e-4)
    # Bonds along the backbone, CA-CB, and Pro's ring closed through CG and CD onto its N.
    bonds = {tuple(b) for b in mapping.cg_bonds.tolist()}
    assert bonds == {(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 6), (6, 7), (6, 8), (5, 8), (7, 9), (9, 10)}
    cg = mapping.cg_topology
    assert [r.name for r in cg.residues()] == ["ACE", "GLY", "PRO", "NME"]
    assert [r.id for r in cg.residues()] == [r.id for r in topology.residues()]
    # The types a bound model finds from the CG topology are the mapping's types.
    types, unknown = resolve_bead_types(bead_type_keys(cg), mapping.type_names)
    assert unknown == [] and types == [t for *_, t in expected]


def test_glycine_ca_and_proline_n_never_take_the_generic_backbone_type():
    topology, _ = build_peptide("GP")
    mapping = protein_backbone_mapping(topology)
    assert mapping.own_type_keys == ["GLY:CA", "PRO:N"]
    keys = bead_type_keys(mapping.cg_topology)
    # A model that knows only the generic backbone types does not know glycine's CA or proline's N.
    types, unknown = resolve_bead_types(keys, ["ACE:CH3", "NME:CH3", "*:N", "*:CA", "*:C", "PRO:CB"],
                                        mapping.own_type_keys)
    assert unknown == ["GLY:CA", "PRO:N"]
    assert types[2] == "*:N" and types[6] == "*:CA"


def test_cg_phi_psi_equal_all_atom_phi_psi():
    topology, positions = build_peptide("AYK")
    mapping = mapping_from_spec(topology, "protein_backbone")
    rng = np.random.default_rng(0)
    frames = positions[None] + rng.normal(0, 0.03, (6,) + positions.shape)
    all_atom = mdtraj.Trajectory(frames, mdtraj.Topology.from_openmm(topology))
    cg = mdtraj.Trajectory(mapping.map_positions(frames), mdtraj.Topology.from_openmm(mapping.cg_topology))
    for compute in (mdtraj.compute_phi, mdtraj.compute_psi):
        (aa_atoms, aa_angles), (cg_atoms, cg_angles) = compute(all_atom), compute(cg)
        assert len(cg_atoms) == 3  # one phi and one psi per residue
        np.testing.assert_allclose(cg_angles, aa_angles, atol=1e-5)
        names = [[cg.topology.atom(i).name for i in quad] for quad in cg_atoms]
        assert names[0] == (["C", "N", "CA", "C"] if compute is mdtraj.compute_phi else ["N", "CA", "C", "N"])


def test_a_residue_without_cb_other_than_glycine_is_refused():
    topology, positions = build_peptide("A")
    modeller = app.Modeller(topology, positions)
    modeller.delete([a for a in modeller.topology.atoms() if a.residue.name == "ALA" and a.name == "CB"])
    with pytest.raises(InputError, match=r"ALA2 has no atom CB \(only glycine has no CB\)"):
        protein_backbone_mapping(modeller.topology)


def test_a_pdb_with_missing_heavy_atoms_names_them_and_the_fixer(tmp_path):
    topology, positions = build_peptide("W")
    modeller = app.Modeller(topology, positions * unit.nanometer)
    modeller.delete([a for a in modeller.topology.atoms() if a.name in ("CZ2", "CH2") or a.element.symbol == "H"])
    path = tmp_path / "broken.pdb"
    with open(path, "w") as handle:
        app.PDBFile.writeFile(modeller.topology, modeller.positions, handle)
    config = ReferenceConfig(testsystem=None, pdb=str(path))
    with pytest.raises(InputError, match=r"TRP2 \(chain A\): CZ2, CH2.*PDBFixer"):
        build_system(config)


def test_a_user_pdb_without_hydrogens_gets_them(tmp_path):
    topology, positions = build_peptide("AY")
    modeller = app.Modeller(topology, positions * unit.nanometer)
    modeller.delete([a for a in modeller.topology.atoms() if a.element.symbol == "H"])
    path = tmp_path / "heavy.pdb"
    with open(path, "w") as handle:
        app.PDBFile.writeFile(modeller.topology, modeller.positions, handle)
    system, pdb_topology, _ = build_system(ReferenceConfig(testsystem=None, pdb=str(path)))
    assert pdb_topology.getNumAtoms() == topology.getNumAtoms() == system.getNumParticles()


def test_hydrogen_mass_repartitioning_leaves_forces_unchanged():
    plain = ReferenceConfig(testsystem=None, sequence="AY")
    heavy = ReferenceConfig(testsystem=None, sequence="AY", hydrogen_mass_amu=3.0, timestep_ps=0.004)
    results, positions = [], None
    for config in (plain, heavy):
        system, topology, built = build_system(config)
        positions = built if positions is None else positions
        context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
        context.setPositions(positions)
        state = context.getState(getForces=True, getEnergy=True)
        masses = np.array([system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(system.getNumParticles())])
        results.append((state.getForces(asNumpy=True)._value, state.getPotentialEnergy()._value, masses))
    (f0, e0, m0), (f1, e1, m1) = results
    np.testing.assert_allclose(f1, f0, rtol=1e-10, atol=1e-8)
    assert e1 == pytest.approx(e0, rel=1e-12)
    assert m0.sum() == pytest.approx(m1.sum()) and m1.min() == pytest.approx(3.0)


@pytest.mark.parametrize("settings, message", [
    (dict(sequence="AY", timestep_ps=0.004), "needs hydrogen mass repartitioning"),
    (dict(sequence="AY", hydrogen_mass_amu=9.0), "outside 1-5 amu"),
    (dict(sequence="AZ"), r"\['Z'\]"),
    (dict(sequence="AY", pdb="x.pdb"), "exactly one source"),
])
def test_bad_reference_settings_are_refused(settings, message):
    with pytest.raises(InputError, match=message):
        ReferenceConfig(testsystem=None, **settings).validate()


def test_reference_from_a_sequence_on_the_command_line(tmp_path):
    out = tmp_path / "ref"
    command = [sys.executable, "-m", "openmm_cg.cli", "reference", "--sequence", "GA", "--hydrogen-mass", "3",
               "--timestep", "0.004", "--frames-per-seed", "4", "--save-interval-steps", "5",
               "--equilibration-steps", "10", "--seeds", "0", "--out", str(out)]
    subprocess.run(command, check=True, capture_output=True)
    import h5py

    with h5py.File(out / "seed_0000.h5") as h5:
        metadata = json.loads(h5.attrs["openmm_cg_metadata"])
        assert h5["forces"].shape == (4, CAP_ATOMS + ATOMS["GLY"] + ATOMS["ALA"], 3)
    assert metadata["hydrogen_mass_amu"] == 3.0 and metadata["timestep_ps"] == 0.004
    assert metadata["source"] == "sequence:ACE-GLY-ALA-NME forcefield:amber14-all.xml,implicit/gbn2.xml"
    bad = subprocess.run(command[:5] + ["GXA"] + command[6:-1] + [str(tmp_path / "ref2")], capture_output=True,
                         text=True)
    assert bad.returncode != 0 and "['X']" in bad.stderr and not (tmp_path / "ref2").exists()
