"""The package's shape: stages import only what lies before them, without cycles; model kinds come from one
registry; shipped models are package data that a built wheel carries."""
import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "openmm_cg"

# The pipeline, in order (the design card's "stages import only what lies before them"): a module may import its
# own stage and the stages before it.
STAGES = [
    ("units/io", ["_version", "_runtime", "errors", "units", "outputs", "geometry", "topology", "machine"]),
    ("reference data", ["data.reference", "data.polymers", "data.peptides"]),
    ("mapping", ["mapping", "dynamics.clustering"]),
    ("datasets", ["data.datasets", "dynamics.data"]),
    ("priors", ["priors"]),
    ("models", ["nn", "dynamics.model", "dynamics.chains"]),
    ("training", ["training", "classical", "dynamics.train"]),
    ("model file", ["export"]),
    ("simulation", ["simulation", "dynamics.propagator", "dynamics.rollout"]),
    ("analysis", ["analysis"]),
    ("pipelines", ["workflows", "cli"]),
]


def stage_of(module: str) -> int:
    """Stage index of a dotted module name below openmm_cg (the longest matching prefix decides)."""
    best, best_length = None, -1
    for index, (_, prefixes) in enumerate(STAGES):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_length:
                best, best_length = index, len(prefix)
    if best is None:
        raise AssertionError(f"openmm_cg.{module} belongs to no stage: add it to STAGES")
    return best


def package_modules() -> dict:
    """Dotted name (below openmm_cg) -> path, for every module but package __init__ files."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] != "__init__":
            modules[".".join(parts)] = path
    return modules


def imports_of(module: str, path: Path) -> set:
    """Every openmm_cg module that ``module`` imports, at module level or inside functions."""
    package = module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1] if node.level > 1 else package
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("openmm_cg"):
                target = node.module[len("openmm_cg."):] if node.module != "openmm_cg" else ""
            else:
                continue
            names = [f"{target}.{alias.name}".strip(".") for alias in node.names]
            for name in names + [target]:
                if name and (name in MODULES or name.replace(".", "/") in PACKAGES):
                    found.add(name)
                    break
            else:
                if target:
                    found.add(target)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("openmm_cg."):
                    found.add(alias.name[len("openmm_cg."):])
    return found


MODULES = package_modules()
PACKAGES = {str(p.parent.relative_to(PACKAGE)) for p in PACKAGE.rglob("__init__.py")}


def test_stages_import_only_earlier_stages():
    backwards = []
    for module, path in sorted(MODULES.items()):
        for imported in imports_of(module, path):
            if stage_of(imported) > stage_of(module):
                backwards.append(f"{module} ({STAGES[stage_of(module)][0]}) imports {imported} "
                                 f"({STAGES[stage_of(imported)][0]})")
    assert not backwards, "\n".join(backwards)


def test_no_import_cycles():
    graph = {module: {i for i in imports_of(module, path) if i in MODULES} for module, path in MODULES.items()}
    state = {}

    def visit(module, trail):
        if state.get(module) == "done":
            return
        if state.get(module) == "open":
            raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(module):] + [module]))
        state[module] = "open"
        for imported in sorted(graph[module]):
            visit(imported, trail + [module])
        state[module] = "done"

    for module in sorted(graph):
        visit(module, [])


def test_the_stage_check_catches_a_backward_import(tmp_path):
    """The walker must see imports inside functions and relative imports of any depth."""
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from ..export import save_model\n    from ...openmm_cg import units\n")
    assert "export" in imports_of("training.m", source)
    assert stage_of("export") > stage_of("training.m")


def test_every_kind_builds_what_it_describes():
    """build(describe(module)) is the same architecture: the weights load and the energies agree."""
    import numpy as np
    import torch

    from openmm_cg.nn.kinds import get_kind, kind_of, kinds
    from openmm_cg.nn.periodic import PeriodicCGPotentialModule
    from openmm_cg.nn.potential import CGPotentialModule
    from openmm_cg.nn.schnet import SchNetConfig
    from openmm_cg.nn.tabulated import PeriodicTabulatedPair
    from openmm_cg.priors.pair import PairPriorParameters
    from openmm_cg.priors.terms import PriorParameters

    torch.manual_seed(0)
    config = SchNetConfig(n_features=8, n_interactions=1, n_rbf=6, cutoff_nm=0.7, n_output_hidden=8)
    box = torch.eye(3, dtype=torch.float64).unsqueeze(0) * 2.0
    x = torch.rand(1, 12, 3, dtype=torch.float64) * 2.0
    modules = [
        (CGPotentialModule([0, 1, 0], PriorParameters(bond_pairs=np.array([[0, 1]]), bond_k=np.array([100.0]),
                                                       bond_r0_nm=np.array([0.3])), config, energy_scale_kJ_per_mol=2.0),
         (x[:, :3], None)),
        (PeriodicCGPotentialModule([0], PairPriorParameters(1e-6, 12.0, 0.7), config, energy_scale_kJ_per_mol=3.0),
         (x, box)),
        (PeriodicTabulatedPair(0.2, 0.7, [30.0, 10.0, 2.0, 0.0]), (x, box)),
    ]
    assert set(kinds()) >= {"molecular", "periodic", "tabulated-pair", "dynamics", "score"}
    for module, (positions, boxes) in modules:
        module = module.double()
        for parameter in module.parameters():
            torch.nn.init.normal_(parameter, std=0.1)
        description = module.describe()
        rebuilt = kind_of(description).build(description).double()
        assert kind_of(description) is get_kind(description["model_kind"])
        rebuilt.load_state_dict(module.state_dict())
        torch.testing.assert_close(rebuilt.energy_batch(positions, boxes), module.energy_batch(positions, boxes))
        assert float(module.energy_batch(positions, boxes).detach().abs().sum()) > 0


def test_unknown_kind_is_an_error():
    from openmm_cg.errors import ModelFileError
    from openmm_cg.nn.kinds import kind_of

    with pytest.raises(ModelFileError, match="unknown model kind 'spline'"):
        kind_of({"model_kind": "spline", "kind": "openmm-cg potential"})


def test_wheel_carries_the_shipped_models_and_loads_them_by_name(tmp_path):
    """A wheel built from the tree holds every model of the catalog; installed (without dependencies, into a
    folder of its own) it loads each one by name from outside the source tree."""
    import json

    catalog = json.loads((PACKAGE / "models" / "catalog.json").read_text())["models"]
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("openmm_cg-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for entry in catalog.values():
        for file in (entry["file"], entry["card"], Path(entry["file"]).stem + ".json",
                     Path(entry["file"]).stem + ".state.pt"):
            assert f"openmm_cg/models/{file}" in names, file
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                                str(tmp_path / "site"), str(wheel)], capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr[-2000:]
    script = ("import openmm_cg, sys; from openmm_cg import CGPotential; from openmm_cg.simulation.potential import "
              "shipped_models\nassert openmm_cg.__file__.startswith(sys.argv[1]), openmm_cg.__file__\n"
              "for name in shipped_models():\n    p = CGPotential.load(name)\n    print(name, p.kind)")
    # The installed copy comes first on the path; torch, OpenMM and the rest come from this environment.
    ran = subprocess.run([sys.executable, "-c", script, str(tmp_path / "site")], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path, env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin"})
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert sorted(line.split()[0] for line in ran.stdout.splitlines()) == sorted(catalog)
