"""Shared fixtures: a small alanine dipeptide reference, its CG dataset, and exported models."""
import os

import numpy as np
import pytest

import openmm_cg  # noqa: F401  (imports torch before openmm)

os.environ.setdefault("PYTHONWARNINGS", "ignore")


@pytest.fixture(scope="session")
def ala2_reference(tmp_path_factory):
    """2 seeds x 1500 frames of AlanineDipeptideImplicit at 300 K (HBonds, 2 fs, frames every 0.1 ps)."""
    from openmm_cg.data.reference import ReferenceConfig, generate_reference

    out = tmp_path_factory.mktemp("reference")
    config = ReferenceConfig(frames_per_seed=1500, chunk_frames=500, equilibration_steps=500, seeds=[0, 1])
    generate_reference(config, out)
    return out, config


@pytest.fixture(scope="session")
def ala2_dataset(ala2_reference, tmp_path_factory):
    from openmm_cg.workflows import map_reference

    directory, _ = ala2_reference
    path = tmp_path_factory.mktemp("cg") / "cg.h5"
    return path, map_reference(directory, "alanine_dipeptide", path)


@pytest.fixture(scope="session")
def ala2_module(ala2_dataset):
    """Priors fitted to the data + a randomly initialized (seeded) CGSchNet: a smooth, nontrivial potential."""
    import torch

    from openmm_cg.nn.potential import CGPotentialModule
    from openmm_cg.nn.schnet import SchNetConfig
    from openmm_cg.priors.fit import fit_priors

    _, dataset = ala2_dataset
    params = fit_priors(dataset.positions_nm, dataset.mapping.cg_bonds, dataset.temperature_K)
    torch.manual_seed(0)
    config = SchNetConfig(n_features=32, n_interactions=2, n_rbf=16, n_output_hidden=16)
    module = CGPotentialModule(dataset.mapping.bead_types, params, config, n_types=len(dataset.mapping.type_names),
                               energy_scale_kJ_per_mol=5.0)
    # New networks start with a zero output layer (= priors only); give it weights so tests see the network.
    torch.nn.init.normal_(module.network.output[-1].weight, std=0.3)
    return module, params, config


@pytest.fixture(scope="session")
def ala2_exported(ala2_module, ala2_dataset, tmp_path_factory):
    """The module exported in float64 and float32: {dtype: path}."""
    from openmm_cg.export import save_model
    from openmm_cg.nn.kinds import potential_metadata

    module, params, config = ala2_module
    _, dataset = ala2_dataset
    metadata = potential_metadata(module, dataset.mapping.to_dict(), [dataset.temperature_K], dataset.data_hash())
    out = tmp_path_factory.mktemp("models")
    return {dtype: save_model(module, metadata, out / f"ala2_{dtype}.pt", dtype=dtype)
            for dtype in ("float64", "float32")}


def cg_frames(dataset, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return dataset.positions_nm[rng.choice(dataset.n_frames, n, replace=False)].astype(np.float64)
