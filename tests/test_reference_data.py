"""Reference MD files: metadata, resume without rewriting, refusals; user trajectories."""
import json

import h5py
import numpy as np
import pytest

from openmm_cg.data.datasets import CGDataset, build_cg_dataset, read_reference, read_user_trajectory
from openmm_cg.data.reference import ReferenceConfig, generate_reference, run_seed, seed_path
from openmm_cg.errors import InputError


def test_reference_metadata_and_units(ala2_reference):
    directory, config = ala2_reference
    trajectory = read_reference(seed_path(directory, 0))
    assert trajectory.positions_nm.shape == (1500, 22, 3) == trajectory.forces_kJ_per_mol_nm.shape
    meta = trajectory.metadata
    assert meta["units"] == {"positions": "nm", "forces": "kJ/mol/nm", "energy": "kJ/mol", "time": "ps"}
    assert meta["temperature_K"] == 300.0 and meta["timestep_ps"] == 0.002 and meta["seed"] == 0
    assert meta["constraints"] == "HBonds" and meta["n_constraints"] == 12
    with h5py.File(seed_path(directory, 0)) as h5:
        time_ps = h5["time_ps"][:]
    np.testing.assert_allclose(np.diff(time_ps), config.save_interval_ps, rtol=1e-6)


def test_reference_resumes_without_rewriting(tmp_path):
    config = ReferenceConfig(frames_per_seed=60, chunk_frames=20, equilibration_steps=50, seeds=[4])
    path = run_seed(config, tmp_path, 4)
    with h5py.File(path) as h5:
        first = h5["positions"][:]
        h5_time = h5["time_ps"][:]
    # Simulate a crash after a chunk was appended but before the frame count was updated.
    with h5py.File(path, "a") as h5:
        h5["positions"].resize(70, axis=0)
        h5["forces"].resize(70, axis=0)
    config.frames_per_seed = 100
    run_seed(config, tmp_path, 4)
    with h5py.File(path) as h5:
        assert h5.attrs["n_frames_done"] == 100 and h5["positions"].shape[0] == 100
        np.testing.assert_array_equal(h5["positions"][:60], first)
        np.testing.assert_allclose(np.diff(h5["time_ps"][:]), np.diff(h5_time)[0], rtol=1e-6)
    changed = ReferenceConfig(frames_per_seed=100, chunk_frames=20, equilibration_steps=50, seeds=[4],
                              temperature_K=310.0)
    with pytest.raises(InputError, match="different settings"):
        run_seed(changed, tmp_path, 4)


def test_a_seed_file_killed_at_creation_starts_again_and_a_damaged_one_is_kept(tmp_path):
    """A kill while h5py creates a seed file leaves a header that HDF5 cannot open: that seed starts again. An
    unreadable file big enough to hold frames is refused and left as it is."""
    config = ReferenceConfig(frames_per_seed=20, chunk_frames=20, equilibration_steps=20, seeds=[1])
    stillborn = tmp_path / "seed_0001.h5"
    stillborn.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(88))  # what a kill at creation left in a real run
    path = run_seed(config, tmp_path, 1)
    with h5py.File(path) as h5:
        assert h5.attrs["n_frames_done"] == 20
    damaged = tmp_path / "seed_0002.h5"
    damaged.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(20000))
    with pytest.raises(InputError, match="may hold frames: it is left untouched"):
        run_seed(ReferenceConfig(frames_per_seed=20, chunk_frames=20, equilibration_steps=20, seeds=[2]), tmp_path, 2)
    assert damaged.stat().st_size == 20008


def test_reference_config_errors():
    with pytest.raises(InputError, match="unstable"):
        ReferenceConfig(constraints="none", timestep_ps=0.002).validate()
    with pytest.raises(InputError, match="exactly one source"):
        ReferenceConfig(testsystem=None).validate()
    with pytest.raises(InputError, match="no system named"):
        from openmm_cg.data.reference import build_system

        build_system(ReferenceConfig(testsystem="NoSuchSystem"))


def test_user_trajectory_with_mismatched_forces(ala2_reference, tmp_path):
    import mdtraj

    directory, _ = ala2_reference
    trajectory = read_reference(seed_path(directory, 0))
    md = mdtraj.Trajectory(trajectory.positions_nm[:10], mdtraj.Topology.from_openmm(trajectory.topology))
    md.save_dcd(str(tmp_path / "t.dcd"))
    md[0].save_pdb(str(tmp_path / "t.pdb"))
    np.save(tmp_path / "f.npy", trajectory.forces_kJ_per_mol_nm[:9])
    with pytest.raises(InputError, match="has shape"):
        read_user_trajectory(tmp_path / "t.dcd", tmp_path / "t.pdb", tmp_path / "f.npy", 300.0)
    np.save(tmp_path / "f.npy", trajectory.forces_kJ_per_mol_nm[:10] / 41.84)  # as if in kcal/mol/Å
    user = read_user_trajectory(tmp_path / "t.dcd", tmp_path / "t.pdb", tmp_path / "f.npy", 300.0,
                                forces_unit="kcal/mol/A")
    np.testing.assert_allclose(user.forces_kJ_per_mol_nm, trajectory.forces_kJ_per_mol_nm[:10], rtol=1e-5)


def test_cg_dataset_roundtrip_and_refusals(ala2_dataset, tmp_path):
    from openmm_cg.errors import OutputExistsError

    path, dataset = ala2_dataset
    again = CGDataset.load(path)
    assert again.data_hash() == dataset.data_hash() and again.mapping.bead_names == dataset.mapping.bead_names
    with pytest.raises(OutputExistsError):
        dataset.save(path)
    (tmp_path / "x.h5").write_text("not hdf5")
    with pytest.raises(InputError, match="cannot read"):
        CGDataset.load(tmp_path / "x.h5")
