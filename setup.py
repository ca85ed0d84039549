from pathlib import Path

from setuptools import find_packages, setup

VERSION = {}
exec((Path(__file__).parent / "openmm_cg" / "_version.py").read_text(), VERSION)  # one place for the version

setup(
    name="openmm-cg",
    version=VERSION["__version__"],
    description="Machine-learned coarse-grained potentials (CGSchNet, force matching) for OpenMM",
    packages=find_packages(include=["openmm_cg", "openmm_cg.*"]),
    package_data={"openmm_cg": ["configs/*.yaml", "models/*.json", "models/*.md", "models/*.pt"]},
    python_requires=">=3.10",
    install_requires=[
        # openmmtorch 1.5 is compiled against torch 2.9.x: any other torch fails to load it.
        "torch==2.9.1",
        "openmm==8.6.1",
        "openmmtorch==1.5",
        "mdtraj>=1.10",
        "openmmtools>=0.23",
        "h5py>=3.8",
        "tables>=3.8",  # mdtraj HDF5 trajectories
        "numpy>=1.24",
        "scipy>=1.10",
        "matplotlib>=3.7",
        "lightning>=2.2",
        "pyyaml>=6.0",
        "tqdm>=4.60",
        "PeptideBuilder>=1.1",  # peptide geometry from a sequence (openmm_cg.data.peptides); brings Biopython
    ],
    # hippynn: the reference HIP-NN-TS implementation, compared against ours in the tests; wheel: the test that
    # builds the wheel and checks that the shipped models are in it.
    extras_require={"test": ["pytest>=7", "hippynn==0.1.3", "wheel"]},
    # Model kinds of other packages join the registry (openmm_cg.nn.kinds) through the group "openmm_cg.model_kinds".
    entry_points={"console_scripts": ["openmm-cg=openmm_cg.cli:main"]},
)
