"""All-atom trajectories in, CG datasets (HDF5) out.

A CG dataset holds mapped positions (nm) and forces (kJ/mol/nm) of every frame, the index of the
trajectory each frame came from (training splits by trajectory, never by frame, since neighbouring
frames are correlated), the state point, the mapping that made it, and for periodic systems the box
vectors of every frame (rows a, b, c in nm, OpenMM's reduced form).
"""
import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from ..errors import InputError
from ..mapping.cgmap import CGMapping, map_and_check, repeat_unit
from ..outputs import atomic_path, check_output_file, sha256_of_arrays
from ..topology import bonds_array, topology_from_json
from .reference import H5_METADATA_KEY


@dataclass
class AATrajectory:
    positions_nm: np.ndarray  # (frames, atoms, 3)
    forces_kJ_per_mol_nm: np.ndarray  # (frames, atoms, 3)
    topology: object  # openmm.app.Topology
    temperature_K: float
    name: str
    metadata: dict = field(default_factory=dict)
    box_vectors_nm: Optional[np.ndarray] = None  # (frames, 3, 3) for periodic systems


@contextmanager
def hdf5_writer(path, overwrite: bool = False):
    """An HDF5 file to write a dataset into: refused if ``path`` exists (unless ``overwrite``), and atomic (it
    appears at ``path`` only once the block has finished)."""
    import h5py

    with atomic_path(check_output_file(path, overwrite)) as tmp:
        with h5py.File(tmp, "w") as h5:
            yield h5


def open_hdf5(path):
    """An HDF5 file opened for reading, or a clear InputError."""
    import h5py

    try:
        return h5py.File(Path(path), "r")
    except OSError as error:
        raise InputError(f"cannot read {path} as HDF5: {error}") from None


def read_reference(path) -> AATrajectory:
    """Read one file written by :func:`openmm_cg.data.reference.generate_reference`."""
    path = Path(path)
    with open_hdf5(path) as h5:
        if H5_METADATA_KEY not in h5.attrs:
            raise InputError(f"{path} is not an openmm-cg reference file (no {H5_METADATA_KEY} attribute)")
        metadata = json.loads(h5.attrs[H5_METADATA_KEY])
        n_done = int(h5.attrs["n_frames_done"])
        positions = h5["positions"][:n_done]
        forces = h5["forces"][:n_done]
        topology = topology_from_json(h5.attrs["topology_json"])
        boxes = h5["box_vectors"][:n_done] if "box_vectors" in h5 else None
    if metadata.get("periodic") and boxes is None:
        raise InputError(f"{path} is from a periodic system but holds no box vectors")
    return AATrajectory(positions, forces, topology, float(metadata["temperature_K"]), path.stem, metadata, boxes)


def read_user_trajectory(trajectory_path, topology_path, forces_path, temperature_K: float,
                         forces_unit: str = "kJ/mol/nm") -> AATrajectory:
    """A user's trajectory (any mdtraj format, nm) plus forces (.npy, frames x atoms x 3).

    Forces in kcal/mol/Å are converted with ``forces_unit="kcal/mol/A"``.
    """
    import mdtraj

    trajectory = mdtraj.load(str(trajectory_path), top=str(topology_path))
    forces = np.load(forces_path)
    factors = {"kJ/mol/nm": 1.0, "kcal/mol/A": 4.184 * 10.0, "kJ/mol/A": 10.0}
    if forces_unit not in factors:
        raise InputError(f"forces_unit must be one of {sorted(factors)}")
    if forces.shape != trajectory.xyz.shape:
        raise InputError(
            f"trajectory {trajectory_path} has shape {trajectory.xyz.shape} but forces {forces_path} have {forces.shape}"
        )
    return AATrajectory(trajectory.xyz, forces * factors[forces_unit], trajectory.topology.to_openmm(),
                        float(temperature_K), Path(trajectory_path).stem,
                        {"source": str(trajectory_path), "forces_unit_in": forces_unit})


@dataclass
class CGDataset:
    positions_nm: np.ndarray  # (frames, beads, 3) float32
    forces_kJ_per_mol_nm: np.ndarray  # (frames, beads, 3) float32
    trajectory_index: np.ndarray  # (frames,) int
    temperature_K: float
    mapping: CGMapping
    trajectory_names: List[str]
    source_metadata: dict = field(default_factory=dict)
    box_vectors_nm: Optional[np.ndarray] = None  # (frames, 3, 3); None for non-periodic systems

    @property
    def periodic(self) -> bool:
        return self.box_vectors_nm is not None

    @property
    def n_frames(self) -> int:
        return len(self.positions_nm)

    def data_hash(self) -> str:
        return sha256_of_arrays(self.positions_nm, self.forces_kJ_per_mol_nm)

    def select_trajectories(self, trajectory_ids: Sequence[int]) -> "CGDataset":
        keep = np.isin(self.trajectory_index, np.asarray(trajectory_ids))
        return CGDataset(self.positions_nm[keep], self.forces_kJ_per_mol_nm[keep], self.trajectory_index[keep],
                         self.temperature_K, self.mapping, self.trajectory_names, self.source_metadata,
                         None if self.box_vectors_nm is None else self.box_vectors_nm[keep])

    def save(self, path, overwrite: bool = False) -> Path:
        with hdf5_writer(path, overwrite) as h5:
            self.write_group(h5)
        return Path(path)

    @classmethod
    def load(cls, path) -> "CGDataset":
        with open_hdf5(path) as h5:
            return cls.read_group(h5, str(path))

    def model_description(self):
        """(the molecule a model trained on these data describes, extra metadata): its mapping, and one frame to
        start simulations from. A periodic model describes the repeating molecule of the liquid, with the full
        reference mapping and one frame with its box beside it."""
        if not self.periodic:
            return self.mapping.to_dict(), {"example_positions_nm": self.positions_nm[0].tolist()}
        return (dict(repeat_unit(self.mapping), mapping=self.mapping.to_dict()),
                {"example_liquid_frame": {"positions_nm": self.positions_nm[0].tolist(),
                                          "box_nm": self.box_vectors_nm[0].tolist()}})

    def write_group(self, group) -> None:
        """Write into an HDF5 group (a whole file's root, or one group of a file that holds several)."""
        group.create_dataset("positions", data=self.positions_nm, compression="gzip", compression_opts=1)
        group.create_dataset("forces", data=self.forces_kJ_per_mol_nm, compression="gzip", compression_opts=1)
        group.create_dataset("trajectory_index", data=self.trajectory_index)
        if self.box_vectors_nm is not None:
            group.create_dataset("box_vectors", data=self.box_vectors_nm)
        group.attrs["kind"] = "cg_dataset"
        group.attrs["temperature_K"] = self.temperature_K
        group.attrs["mapping_json"] = json.dumps(self.mapping.to_dict())
        group.attrs["trajectory_names"] = json.dumps(self.trajectory_names)
        group.attrs["source_metadata"] = json.dumps(self.source_metadata)
        group.attrs["units"] = json.dumps({"positions": "nm", "forces": "kJ/mol/nm", "temperature": "K"})

    @classmethod
    def read_group(cls, group, where: str) -> "CGDataset":
        if group.attrs.get("kind") != "cg_dataset":
            raise InputError(f"{where} is not an openmm-cg CG dataset")
        return cls(
            positions_nm=group["positions"][:], forces_kJ_per_mol_nm=group["forces"][:],
            trajectory_index=group["trajectory_index"][:], temperature_K=float(group.attrs["temperature_K"]),
            mapping=CGMapping.from_dict(json.loads(group.attrs["mapping_json"])),
            trajectory_names=json.loads(group.attrs["trajectory_names"]),
            source_metadata=json.loads(group.attrs["source_metadata"]),
            box_vectors_nm=group["box_vectors"][:] if "box_vectors" in group else None,
        )


def build_cg_dataset(trajectories: Sequence[AATrajectory], mapping: CGMapping, system=None) -> CGDataset:
    """Map all-atom trajectories (one state point) into one CG dataset.

    ``system``, when given, is the all-atom System the forces came from; its constraints are checked
    against the force map (constraint forces must cancel within beads).
    """
    if not trajectories:
        raise InputError("no trajectories to map")
    temperatures = {t.temperature_K for t in trajectories}
    if len(temperatures) != 1:
        raise InputError(f"trajectories come from different temperatures {sorted(temperatures)}: "
                         "build one dataset per state point")
    if system is not None:
        mapping.check_constraints(system)
    with_box = [t.box_vectors_nm is not None for t in trajectories]
    periodic = any(with_box) or any(t.metadata.get("periodic") for t in trajectories)
    if periodic and not all(with_box):
        missing = [t.name for t, has in zip(trajectories, with_box) if not has]
        raise InputError(f"a periodic mapping needs the box vectors of every frame; {missing} hold none")
    positions, forces, index, names, boxes = [], [], [], [], []
    for k, trajectory in enumerate(trajectories):
        n_atoms = trajectory.topology.getNumAtoms()
        if n_atoms != mapping.n_atoms:
            raise InputError(f"{trajectory.name}: topology has {n_atoms} atoms, the mapping expects {mapping.n_atoms}")
        if len(trajectory.positions_nm) == 0:
            raise InputError(f"{trajectory.name} holds no frames")
        cg_x, cg_f = map_and_check(mapping, trajectory.positions_nm, trajectory.forces_kJ_per_mol_nm,
                                   bonds_array(trajectory.topology), trajectory.name)
        if periodic:
            boxes.append(check_boxes(trajectory.box_vectors_nm, len(cg_x), trajectory.name))
        positions.append(cg_x.astype(np.float32))
        forces.append(cg_f.astype(np.float32))
        index.append(np.full(len(cg_x), k, dtype=np.int32))
        names.append(trajectory.name)
    source = {t.name: t.metadata for t in trajectories}
    return CGDataset(np.concatenate(positions), np.concatenate(forces), np.concatenate(index),
                     temperatures.pop(), mapping, names, source, np.concatenate(boxes) if periodic else None)


def check_boxes(box_vectors_nm: np.ndarray, n_frames: int, what: str) -> np.ndarray:
    """Box vectors (frames, 3, 3) in OpenMM's reduced form (a along x, b in the xy plane, |b_x| <= a_x/2, ...)."""
    boxes = np.asarray(box_vectors_nm, dtype=np.float64)
    if boxes.shape != (n_frames, 3, 3):
        raise InputError(f"{what}: box vectors have shape {boxes.shape}, expected ({n_frames}, 3, 3)")
    if not np.isfinite(boxes).all():
        raise InputError(f"{what}: NaN/Inf in the box vectors")
    upper = boxes[:, [0, 0, 1], [1, 2, 2]]
    diagonal = boxes[:, [0, 1, 2], [0, 1, 2]]
    reduced = (np.abs(upper) < 1e-6).all(axis=1) & (diagonal > 0).all(axis=1) \
        & (np.abs(boxes[:, 1, 0]) <= 0.5 * diagonal[:, 0] + 1e-6) \
        & (np.abs(boxes[:, 2, 0]) <= 0.5 * diagonal[:, 0] + 1e-6) & (np.abs(boxes[:, 2, 1]) <= 0.5 * diagonal[:, 1] + 1e-6)
    if not reduced.all():
        bad = np.flatnonzero(~reduced)
        raise InputError(f"{what}: box vectors of frames {bad[:10].tolist()} are not in OpenMM's reduced form "
                         "(a along x, b in the xy plane, off-diagonal terms at most half the diagonal)")
    return boxes


def trajectory_split(dataset: CGDataset, validation_fraction: float, seed: int):
    """Split trajectory ids into (train, validation); at least one trajectory in each when possible."""
    ids = np.unique(dataset.trajectory_index)
    if len(ids) < 2:
        raise InputError(
            "a train/validation split by trajectory needs at least two trajectories; generate more seeds "
            "(splitting one trajectory by frame would leak correlated frames into validation)"
        )
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(ids)
    n_val = min(len(ids) - 1, max(1, int(round(validation_fraction * len(ids)))))
    return np.sort(shuffled[n_val:]), np.sort(shuffled[:n_val])


def load_references(paths: Optional[Sequence] = None, directory=None) -> List[AATrajectory]:
    if directory is not None:
        paths = sorted(Path(directory).glob("seed_*.h5"))
        if not paths:
            raise InputError(f"{directory} holds no reference files (seed_*.h5)")
    return [read_reference(p) for p in paths]
