"""Pressure and compressibility matching of a periodic CG model (the volume potential of
``priors.volume``), from CG NVT runs around the all-atom volume.

At each training temperature the model runs NVT in the all-atom box scaled to ``1 - d``, 1 and ``1 + d``
times its volume; the parabola through the three virial pressures gives the CG pressure at the all-atom
volume and its slope there (P(V) is convex, so the mean of two runs at ``1 -+ d`` would overestimate the
pressure: by about 100 bar for CG methanol at d = 0.05). The all-atom pressure is the reference's barostat pressure (its box is the
NPT mean) and its bulk modulus comes from the NPT volume fluctuations stored with the reference.
Every run is resumable (``run_simulation``), so an interrupted fit continues where it stopped.
"""
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from ..errors import InputError
from ..priors.volume import StatePoint, bulk_modulus_from_fluctuations_bar, fit_volume_term


@dataclass
class PressureMatchingConfig:
    steps: int = 25000              # per volume: 100 ps of 4 fs steps
    timestep_fs: float = 4.0
    report_interval: int = 25
    skip_ps: float = 10.0           # equilibration dropped at each volume
    volume_change: float = 0.05     # d: runs at 1 - d, 1 and 1 + d times the all-atom volume
    n_blocks: int = 10              # block averages for the standard errors
    threads: int = 1
    seed: int = 0


def all_atom_targets(dataset):
    """(pressure bar, bulk modulus bar) of the all-atom reference behind ``dataset``."""
    npt = [m.get("npt") for m in dataset.source_metadata.values()]
    if not npt or any(n is None or "volume_nm3_second_half_std" not in n for n in npt):
        raise InputError("pressure matching needs a reference equilibrated by NPT (its volume fluctuations give the "
                         "all-atom bulk modulus); this dataset's metadata has no 'npt' record")
    pressures = {float(n["pressure_bar"]) for n in npt}
    if len(pressures) != 1:
        raise InputError(f"the dataset mixes reference pressures {sorted(pressures)}")
    bulk = np.mean([bulk_modulus_from_fluctuations_bar(n["volume_nm3_second_half_mean"],
                                                       n["volume_nm3_second_half_std"], dataset.temperature_K)
                    for n in npt])
    return pressures.pop(), float(bulk)


def measure_state_point(model_path, dataset, work, config: PressureMatchingConfig, progress: bool = True):
    """(StatePoint, details) of the model at ``model_path`` at the dataset's temperature and volume."""
    from ..analysis.liquid import block_mean_and_error, virial_pressure_bar
    from ..export import batch_energy_function
    from ..simulation.potential import CGPotential
    from ..simulation.run import SimulationConfig, load_run_frames, run_simulation

    if not dataset.periodic:
        raise InputError("pressure matching needs a periodic (liquid) dataset")
    potential = CGPotential.load(model_path)
    if potential.metadata.get("volume_term"):
        raise InputError(f"{model_path} already has a volume term; match the model without one")
    temperature = dataset.temperature_K
    target_pressure, target_bulk = all_atom_targets(dataset)
    n_molecules = dataset.positions_nm.shape[1] // potential.n_beads
    volume_per_molecule = float(np.mean(np.abs(np.linalg.det(dataset.box_vectors_nm)))) / n_molecules
    start = np.flatnonzero(dataset.trajectory_index == dataset.trajectory_index[0])[-1]
    energy = batch_energy_function(model_path, temperature)
    measured = {}
    for factor in (1.0 - config.volume_change, 1.0, 1.0 + config.volume_change):
        scale = factor ** (1.0 / 3.0)
        out = Path(work) / f"T{temperature:g}_V{factor:g}"
        run_simulation(potential, dataset.positions_nm[start] * scale,
                       SimulationConfig(n_steps=config.steps, timestep_ps=config.timestep_fs * 1e-3,
                                        temperature_K=temperature, report_interval=config.report_interval,
                                        checkpoint_interval=config.report_interval * 40, platform="CPU",
                                        threads=config.threads, seed=config.seed),
                       out, box_vectors_nm=dataset.box_vectors_nm[start] * scale, progress=progress)
        x, boxes = load_run_frames(out, config.skip_ps)
        v = float(np.mean(np.abs(np.linalg.det(boxes)))) / n_molecules
        measured[factor] = (v,) + block_mean_and_error(virial_pressure_bar(energy, x, boxes, temperature),
                                                       config.n_blocks)
    volumes, pressures, errors = (np.array(column) for column in zip(*measured.values()))
    # Exact parabola through the three points, in powers of (v - v0): its first two coefficients are the
    # pressure and the slope at v0, and their errors follow linearly from the runs' standard errors.
    inverse = np.linalg.inv(np.vander(volumes - volume_per_molecule, 3, increasing=True))
    pressure, slope, _ = inverse @ pressures
    covariance = inverse @ np.diag(errors ** 2) @ inverse.T
    point = StatePoint(temperature, volume_per_molecule, target_pressure, target_bulk,
                       cg_pressure_bar=float(pressure), cg_pressure_slope_bar_per_nm3=float(slope))
    details = {"state_point": point.to_dict(),
               "cg_pressure_standard_error_bar": float(np.sqrt(covariance[0, 0])),
               "cg_bulk_modulus_bar": float(-volume_per_molecule * slope),
               "cg_bulk_modulus_standard_error_bar": float(volume_per_molecule * np.sqrt(covariance[1, 1])),
               "runs": [{"volume_per_molecule_nm3": v, "pressure_bar": p, "standard_error_bar": e}
                        for v, p, e in measured.values()]}
    return point, details


def pressure_match(model_path, datasets: Sequence, out, work, config: Optional[PressureMatchingConfig] = None,
                   overwrite: bool = False, progress: bool = True) -> dict:
    """Fit the volume potential of ``model_path`` on ``datasets`` (one per training temperature) and write
    the model with it to ``out``; returns the fit's report (also written to ``work/pressure_matching.json``)."""
    from ..export import add_volume_term, read_metadata
    from ..outputs import check_output_file, write_json

    check_output_file(out, overwrite)  # before the CG runs, not after
    config = config or PressureMatchingConfig()
    metadata = read_metadata(model_path)
    temperature_input = metadata.get("temperature_input")
    points: List[StatePoint] = []
    details = []
    for dataset in datasets:
        point, detail = measure_state_point(model_path, dataset, work, config, progress)
        points.append(point)
        details.append(detail)
    params = fit_volume_term(points, temperature_input["reference_K"] if temperature_input else None)
    add_volume_term(model_path, params, out, overwrite=overwrite)
    report = {"model": str(model_path), "out": str(out), "volume_term": params.to_dict(), "state_points": details,
              "config": asdict(config)}
    write_json(Path(work) / "pressure_matching.json", report)
    return report
