"""The one trajectory writer and reader of the package: DCD (OpenMM's writer) or HDF5 (mdtraj's format),
positions in nm, times in ps, box vectors for periodic systems.

Runs that resume from a checkpoint first cut the file back to the frames the checkpoint knows of: the
frames after it will be produced again. The cut keeps every header field (the DCD's time step, first step
and interval; the HDF5 file's topology and units), so frame times read back right after a resume.
"""
import os
import struct
from pathlib import Path
from typing import Optional

import numpy as np

from .._runtime import openmm
from openmm import app, unit

from ..errors import InputError

FORMATS = ("dcd", "h5")
# OpenMM (like CHARMM) stores the DCD time step in AKMA time units of 0.04888821 ps.
_AKMA_PS = 0.04888821
_HDF5_FRAME_DATASETS = ("coordinates", "time", "cell_lengths", "cell_angles", "velocities", "kineticEnergy",
                        "potentialEnergy", "temperature", "alchemicalLambda")


class TrajectoryWriter:
    """Frames of ``topology`` every ``interval`` steps of ``step_ps``; ``resume_frames`` (not None) continues
    an existing file after cutting it to that many frames."""

    def __init__(self, path, topology: app.Topology, step_ps: float, interval: int = 1,
                 resume_frames: Optional[int] = None):
        self.path = Path(path)
        self.format = self.path.suffix.lstrip(".")
        if self.format not in FORMATS:
            raise InputError(f"trajectory format must be one of {FORMATS}, got {self.path.name}")
        append = resume_frames is not None and self.path.exists()
        if append:
            truncate_trajectory(self.path, resume_frames)
        if self.format == "dcd":
            self._stream = open(self.path, "r+b" if append else "wb")
            self._file = app.DCDFile(self._stream, topology, step_ps * unit.picosecond, interval=interval, append=append)
        else:
            import mdtraj

            self._file = mdtraj.formats.HDF5TrajectoryFile(str(self.path), mode="a" if append else "w")
            if not append:
                self._file.topology = mdtraj.Topology.from_openmm(topology)

    def write(self, positions_nm: np.ndarray, time_ps: float, box_nm: Optional[np.ndarray] = None) -> None:
        positions_nm = np.asarray(positions_nm, dtype=np.float64)
        if self.format == "dcd":
            box = None if box_nm is None else [openmm.Vec3(*row) for row in np.asarray(box_nm)] * unit.nanometer
            self._file.writeModel(positions_nm * unit.nanometer, periodicBoxVectors=box)
            return
        extra = {}
        if box_nm is not None:
            from mdtraj.utils import box_vectors_to_lengths_and_angles

            *lengths, alpha, beta, gamma = box_vectors_to_lengths_and_angles(*np.asarray(box_nm))
            extra = {"cell_lengths": np.array([lengths], dtype=np.float32),
                     "cell_angles": np.array([[alpha, beta, gamma]], dtype=np.float32)}
        self._file.write(positions_nm[None].astype(np.float32), time=np.array([time_ps], dtype=np.float32), **extra)

    def flush(self) -> None:
        if self.format == "dcd":
            self._stream.flush()
            os.fsync(self._stream.fileno())
        else:
            self._file.flush()

    def close(self) -> None:
        (self._stream if self.format == "dcd" else self._file).close()


def _dcd_layout(handle):
    """(frame count, first step, interval, header bytes, bytes per frame) of an OpenMM DCD file."""
    handle.seek(0)
    magic = handle.read(8)
    if magic[4:8] != b"CORD" or struct.unpack("<i", magic[:4])[0] != 84:
        raise InputError(f"{handle.name} is not a DCD file")
    count, first_step, interval = struct.unpack("<3i", handle.read(12))
    handle.seek(48)
    has_box = struct.unpack("<i", handle.read(4))[0] == 1
    handle.seek(92)
    title_bytes = struct.unpack("<i", handle.read(4))[0]
    handle.seek(104 + title_bytes)
    n_atoms = struct.unpack("<i", handle.read(4))[0]
    # Per frame: the box record (6 doubles) if any, then x, y and z (float32 each), every record framed by 4 bytes.
    frame_bytes = (56 if has_box else 0) + 3 * (4 * n_atoms + 8)
    return count, first_step, interval, 104 + title_bytes + 8, frame_bytes


def truncate_trajectory(path, n_frames: int) -> None:
    """Keep the first ``n_frames`` frames of a DCD or HDF5 trajectory; headers stay as they were. A frame that a
    kill cut short is dropped with the others after ``n_frames``."""
    path = Path(path)
    if path.suffix == ".h5":
        import h5py

        with h5py.File(path, "a") as h5:
            for name in _HDF5_FRAME_DATASETS:
                if name in h5 and h5[name].shape[0] > n_frames:
                    h5[name].resize(n_frames, axis=0)
        return
    with open(path, "r+b") as handle:
        count, first_step, interval, header, frame_bytes = _dcd_layout(handle)
        complete = (os.path.getsize(path) - header) // frame_bytes
        if min(count, complete) < n_frames:
            raise InputError(f"{path} holds {min(count, complete)} whole frames, fewer than the {n_frames} its "
                             "checkpoint was written after: the trajectory was changed or lost; start the run again")
        handle.truncate(header + n_frames * frame_bytes)
        handle.seek(8)
        handle.write(struct.pack("<i", n_frames))
        handle.seek(20)
        handle.write(struct.pack("<i", first_step + n_frames * interval))


def frame_times_ps(path) -> np.ndarray:
    """The time of every frame: from the DCD header (first step, interval, time step) or the HDF5 'time'."""
    path = Path(path)
    if path.suffix == ".h5":
        import h5py

        with h5py.File(path, "r") as h5:
            return np.asarray(h5["time"][()], dtype=np.float64)
    with open(path, "rb") as handle:
        count, first_step, interval, _, _ = _dcd_layout(handle)
        handle.seek(44)
        step_ps = struct.unpack("<f", handle.read(4))[0] * _AKMA_PS
    return (first_step + interval * np.arange(1, count + 1)) * step_ps


def run_trajectory_path(out_dir) -> Path:
    """The trajectory file of a simulation or rollout folder (``trajectory.dcd`` or ``.h5``)."""
    out_dir = Path(out_dir)
    paths = [out_dir / f"trajectory.{fmt}" for fmt in FORMATS if (out_dir / f"trajectory.{fmt}").exists()]
    if not paths:
        raise InputError(f"{out_dir} holds no trajectory.dcd or trajectory.h5")
    return paths[0]


def load_run_frames(out_dir, skip_ps: float = 0.0):
    """(positions (F, N, 3) nm, boxes (F, 3, 3) nm or None) of a simulation or rollout folder
    (``trajectory.dcd`` or ``.h5``), float64, without the frames of the first ``skip_ps``."""
    import mdtraj

    out_dir = Path(out_dir)
    paths = [run_trajectory_path(out_dir)]
    if paths[0].suffix == ".h5":
        trajectory = mdtraj.load_hdf5(str(paths[0]))
    else:
        trajectory = mdtraj.load_dcd(str(paths[0]), top=str(out_dir / "topology.pdb"))
    times = frame_times_ps(paths[0])
    skip = int(round(skip_ps / (times[1] - times[0]))) if skip_ps > 0 and len(times) > 1 else 0
    if skip >= trajectory.n_frames:
        raise InputError(f"{out_dir} has {trajectory.n_frames} frames; skipping {skip_ps} ps leaves none")
    boxes = trajectory.unitcell_vectors
    return (trajectory.xyz[skip:].astype(np.float64),
            None if boxes is None else boxes[skip:].astype(np.float64))
