"""The import-order traps of torch / OpenMM / openmm-torch are handled for users."""
import subprocess
import sys

SCRIPT = """
import openmm                      # the trap: openmm before torch
import openmm_cg                   # must repair the TorchForce plugin
import torch
from openmm_cg._runtime import openmmtorch
class M(torch.nn.Module):
    def forward(self, positions):
        return (positions ** 2).sum()
torch.jit.script(M()).save({path!r})
system = openmm.System(); system.addParticle(1.0)
system.addForce(openmmtorch().TorchForce({path!r}))
for name in ("Reference", "CPU"):
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName(name))
    context.setPositions([[1.0, 2.0, 3.0]])
    print(name, context.getState(getEnergy=True).getPotentialEnergy()._value)
"""


def test_openmm_imported_before_torch_still_runs_torchforce(tmp_path):
    script = tmp_path / "script.py"  # TorchScript needs the module's source on disk
    script.write_text(SCRIPT.format(path=str(tmp_path / "m.pt")))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Reference 14.0" in result.stdout and "CPU 14.0" in result.stdout
    assert "simtk" not in result.stderr  # openmmtorch's deprecation noise is silenced
