#!/usr/bin/env bash
# The peer CG stack (torchmd stepping a torchmd-net graph-network model, as torchmd-cg does) in an environment of
# its own, never in openmm-cg's: it brings its own torch (2.14 when this was written), which openmmtorch 1.5 cannot
# load. Usage: benchmarks/peers/setup.sh [folder] (default .venv-peers); prints the versions it installed.
set -euo pipefail
venv="${1:-.venv-peers}"
python3 -m venv "$venv"
"$venv/bin/pip" install -q torchmd torchmd-net
"$venv/bin/python" - <<'PY'
import torch, torchmd, torchmdnet
from importlib.metadata import version
print({name: version(name) for name in ("torch", "torchmd", "torchmd-net")})
PY
