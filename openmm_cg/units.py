"""OpenMM's units everywhere: nm, kJ/mol, kJ/mol/nm, ps, amu, K.

Other units appear only at input/output boundaries and are converted there, with the helpers here.
"""
import numpy as np

# Molar gas constant in kJ/mol/K (CODATA 2018, as OpenMM uses).
MOLAR_GAS_CONSTANT_KJ_PER_MOL_K = 8.314462618e-3
ANGSTROM_PER_NM = 10.0
AVOGADRO_PER_MOL = 6.02214076e23

# A covalent bond between heavy atoms or to hydrogen is 0.09-0.16 nm; CG bonds between beads are
# at most ~1 nm. Bond lengths outside these windows mean the data are not in nm.
ALL_ATOM_BOND_RANGE_NM = (0.07, 0.25)
CG_BOND_RANGE_NM = (0.05, 1.5)


def density_g_per_mL(total_mass_amu: float, volume_nm3) -> np.ndarray:
    """Mass density of ``total_mass_amu`` in ``volume_nm3`` (1 nm^3 = 1e-21 mL; 1 amu = 1 g/mol)."""
    return np.asarray(total_mass_amu) / AVOGADRO_PER_MOL / (np.asarray(volume_nm3) * 1e-21)


def pressure_bar(kJ_per_mol_nm3) -> np.ndarray:
    """A pressure in kJ/mol/nm^3 (energy per volume, per mole) in bar (1e5 Pa): x 16.6054."""
    return np.asarray(kJ_per_mol_nm3) * 1e3 / AVOGADRO_PER_MOL / 1e-27 / 1e5


def kT_kJ_per_mol(temperature_K: float) -> float:
    return MOLAR_GAS_CONSTANT_KJ_PER_MOL_K * float(temperature_K)


def check_bond_lengths_nm(positions_nm: np.ndarray, bonds: np.ndarray, expected_range_nm, what: str) -> None:
    """Raise if the median bonded distance is implausible for coordinates in nm.

    ``positions_nm`` is (frames, atoms, 3) or (atoms, 3); ``bonds`` is (n_bonds, 2) atom indices.
    A factor-10 error (Ångström passed as nm) shows up as bond lengths ~1.0-1.5 "nm".
    """
    from .errors import InputError

    bonds = np.asarray(bonds, dtype=np.int64).reshape(-1, 2)
    if len(bonds) == 0:
        return
    xyz = np.asarray(positions_nm)
    if xyz.ndim == 2:
        xyz = xyz[None]
    sample = xyz[:: max(1, len(xyz) // 100)]
    lengths = np.linalg.norm(sample[:, bonds[:, 0]] - sample[:, bonds[:, 1]], axis=-1)
    median = float(np.median(lengths))
    low, high = expected_range_nm
    if not (low <= median <= high):
        hint = ""
        if low <= median / ANGSTROM_PER_NM <= high:
            hint = " They look like Ångström: divide by 10 to convert to nm."
        elif low <= median * ANGSTROM_PER_NM <= high:
            hint = " They look like micrometre-scale or wrongly scaled data."
        raise InputError(
            f"{what}: median bond length is {median:.4g} nm, outside the plausible range "
            f"{low}-{high} nm for coordinates in nm.{hint}"
        )
