"""The volume potential (pressure and compressibility matching): its pressure shift is exact and it adds
no force; the fit recovers known parameters; and an ideal gas pressure-matched to a target volume and
bulk modulus samples, under OpenMM's MonteCarloBarostat, the exact isobaric volume distribution."""
import numpy as np
import pytest
import torch

from openmm_cg.analysis.liquid import virial_pressure_bar
from openmm_cg.errors import InputError
from openmm_cg.nn.tabulated import PeriodicTabulatedPair
from openmm_cg.priors.volume import (KJ_PER_MOL_NM3_PER_BAR, StatePoint, VolumeTermParameters,
                                     bulk_modulus_from_fluctuations_bar, fit_volume_term)
from openmm_cg.units import kT_kJ_per_mol

T = 300.0
KT = kT_kJ_per_mol(T)


def pair_table(volume_term=None):
    forces = 40.0 * np.exp(-np.linspace(0.0, 3.0, 30)) * np.linspace(1.0, 0.0, 30)  # repulsive, 0 at the cutoff
    return PeriodicTabulatedPair(0.25, 0.6, forces.tolist(), volume_term).double()


def test_volume_term_shifts_the_pressure_exactly_and_adds_no_force():
    params = VolumeTermParameters(volume_per_molecule_nm3=0.06, pressure_shift_bar=180.0, bulk_modulus_bar=7000.0)
    plain, corrected = pair_table(), pair_table(params)
    rng = np.random.default_rng(0)
    box = np.diag([1.9, 2.0, 2.1]) + np.array([[0, 0, 0], [0.3, 0, 0], [-0.2, 0.4, 0]])
    x = torch.tensor(rng.uniform(0, 1, (100, 3)) @ box, requires_grad=True)
    b = torch.tensor(box)
    n, v = 100, abs(np.linalg.det(box)) / 100
    (g_plain,) = torch.autograd.grad(plain(x, b), x)
    (g_corrected,) = torch.autograd.grad(corrected(x, b), x)
    torch.testing.assert_close(g_corrected, g_plain, rtol=0, atol=1e-12)
    expected = n * (180.0 * (v - 0.06) + 7000.0 / (2 * 0.06) * (v - 0.06) ** 2) * KJ_PER_MOL_NM3_PER_BAR
    assert float((corrected(x, b) - plain(x, b)).detach()) == pytest.approx(expected, rel=1e-10)
    frames, boxes = x.detach().numpy()[None], box[None]
    shift = virial_pressure_bar(corrected.energy_batch, frames, boxes, T) - \
        virial_pressure_bar(plain.energy_batch, frames, boxes, T)
    assert float(shift[0]) == pytest.approx(-(180.0 + 7000.0 * (v - 0.06) / 0.06), rel=1e-9)


def points_from(a, b, v0, temperatures, reference=None, slopes=(0.0, 0.0)):
    """State points whose CG pressure and slope make (a, b) the exact answer."""
    points = []
    for k, temperature in enumerate(temperatures):
        tau = temperature / reference - 1.0 if reference else 0.0
        a_t, b_t = a + slopes[0] * tau, b + slopes[1] * tau
        v = v0 * (1.0 + 0.02 * (k - (len(temperatures) - 1) / 2))  # their mean is v0, as the fit takes it
        target_p, target_k = 1.0, 9000.0 + 300.0 * k
        cg_slope = b_t / v0 - target_k / v  # from -v (P' - b/v0) = K
        cg_p = target_p + a_t + b_t * (v - v0) / v0
        points.append(StatePoint(temperature, v, target_p, target_k, cg_p, cg_slope))
    return points


def test_fit_recovers_constant_and_temperature_dependent_terms():
    v0 = 0.0655
    one = fit_volume_term(points_from(150.0, 8000.0, v0, [290.0]))
    assert one.pressure_shift_bar == pytest.approx(150.0) and one.bulk_modulus_bar == pytest.approx(8000.0)
    assert not one.temperature_dependent
    temperatures = [250.0, 290.0, 330.0]
    points = points_from(150.0, 8000.0, v0, temperatures, reference=290.0, slopes=(-400.0, 2500.0))
    fitted = fit_volume_term(points, temperature_reference_K=290.0)
    assert fitted.volume_per_molecule_nm3 == pytest.approx(v0)
    assert (fitted.pressure_shift_bar, fitted.bulk_modulus_bar) == pytest.approx((150.0, 8000.0), rel=1e-9)
    assert (fitted.pressure_shift_slope_bar, fitted.bulk_modulus_slope_bar) == pytest.approx((-400.0, 2500.0), rel=1e-9)
    assert VolumeTermParameters.from_dict(fitted.to_dict()) == fitted
    with pytest.raises(InputError, match="two or more temperatures"):
        fit_volume_term(points[:1], temperature_reference_K=290.0)
    with pytest.raises(ValueError, match="cannot depend on it"):
        pair_table(fitted)


def ideal_gas_dataset(n, volume_nm3, volume_std_nm3):
    """A CG dataset of an ideal gas (no forces) whose 'all-atom' NPT record has the given volume statistics."""
    from openmm_cg.data.datasets import CGDataset
    from openmm_cg.mapping.cgmap import build_mapping
    from test_liquid_training import liquid_topology

    rng = np.random.default_rng(1)
    edge = volume_nm3 ** (1 / 3)
    x = rng.uniform(0, edge, (4, n, 3))
    npt = {"pressure_bar": 1.0, "volume_nm3_second_half_mean": volume_nm3,
           "volume_nm3_second_half_std": volume_std_nm3}
    return CGDataset(x.astype(np.float32), np.zeros_like(x, dtype=np.float32), np.zeros(4, dtype=int), T,
                     build_mapping(liquid_topology(n), [[k] for k in range(n)]), ["gas"],
                     source_metadata={"seed_0000": {"npt": npt}},
                     box_vectors_nm=np.tile(np.eye(3) * edge, (4, 1, 1)))


def test_pressure_matched_ideal_gas_samples_the_exact_isobaric_volumes(tmp_path):
    """An ideal gas has P = N kT / V exactly (no virial, no noise), so the fit is deterministic; the target
    (2 nm^3 at 1 bar, bulk modulus 3000 bar) is far from the ideal gas's own 1 bar volume (~660 nm^3)."""
    from openmm_cg.classical.pair_force_matching import PairForceTable, pair_table_model
    from openmm_cg.export import read_metadata, save_model
    from openmm_cg.simulation.potential import CGPotential
    from openmm_cg.simulation.run import SimulationConfig, run_simulation
    from openmm_cg.workflows import PressureMatchingConfig, pressure_match

    n, volume, bulk_target = 16, 2.0, 3000.0
    volume_std = np.sqrt(KT * volume / (bulk_target * KJ_PER_MOL_NM3_PER_BAR))
    dataset = ideal_gas_dataset(n, volume, volume_std)
    assert bulk_modulus_from_fluctuations_bar(volume, volume_std, T) == pytest.approx(bulk_target)
    gas = save_model(*pair_table_model(PairForceTable(0.1, 0.3, np.zeros(8), T), dataset), tmp_path / "gas.pt",
                     dtype="float64")
    config = PressureMatchingConfig(steps=400, skip_ps=0.0, report_interval=20, n_blocks=4)
    no_npt = ideal_gas_dataset(n, volume, volume_std)
    no_npt.source_metadata = {"seed_0000": {}}
    with pytest.raises(InputError, match="NPT"):
        pressure_match(gas, [no_npt], tmp_path / "never.pt", tmp_path / "never", config, progress=False)
    report = pressure_match(gas, [dataset], tmp_path / "gas_matched.pt", tmp_path / "work", config, progress=False)
    with pytest.raises(InputError, match="already has a volume term"):
        pressure_match(tmp_path / "gas_matched.pt", [dataset], tmp_path / "twice.pt", tmp_path / "twice", config,
                       progress=False)
    params = VolumeTermParameters.from_dict(read_metadata(tmp_path / "gas_matched.pt")["volume_term"])
    v0 = volume / n
    # Ideal gas: P(v) = kT/v, so a = kT/v0 - 1 bar and b = K - kT/v0 (up to the secant slope's O(d^2)).
    ideal_bar = KT / v0 / KJ_PER_MOL_NM3_PER_BAR
    assert params.pressure_shift_bar == pytest.approx(ideal_bar - 1.0, rel=5e-3)
    assert params.bulk_modulus_bar == pytest.approx(bulk_target - ideal_bar, rel=5e-3)
    assert report["state_points"][0]["cg_bulk_modulus_bar"] == pytest.approx(ideal_bar, rel=5e-3)

    run = run_simulation(CGPotential.load(tmp_path / "gas_matched.pt"), dataset.positions_nm[0],
                         SimulationConfig(n_steps=8000, timestep_ps=0.004, temperature_K=T, report_interval=4,
                                          checkpoint_interval=8000, platform="Reference", seed=2, pressure_bar=1.0,
                                          barostat_interval_steps=1),
                         tmp_path / "npt", box_vectors_nm=dataset.box_vectors_nm[0], progress=False)
    volumes = np.loadtxt(run["log"], delimiter=",", skiprows=1, usecols=6)[250:]
    # The exact isobaric distribution of N ideal particles with this volume potential:
    # p(V) ~ V^N exp(-(P V + U_V(V)) / kT), U_V = N [a (v - v0) + b / (2 v0) (v - v0)^2].
    grid = np.linspace(0.5, 5.0, 20001)
    v = grid / n
    u = n * (params.pressure_shift_bar * (v - v0) + params.bulk_modulus_bar / (2 * v0) * (v - v0) ** 2)
    log_p = n * np.log(grid) - (1.0 * grid + u) * KJ_PER_MOL_NM3_PER_BAR / KT
    p = np.exp(log_p - log_p.max())
    mean = float((grid * p).sum() / p.sum())
    std = float(np.sqrt(((grid - mean) ** 2 * p).sum() / p.sum()))
    assert mean == pytest.approx(volume, rel=0.03)  # the matched state point itself
    assert volumes.mean() == pytest.approx(mean, rel=0.01)  # block standard error: 0.15%
    assert volumes.std() == pytest.approx(std, rel=0.1)
