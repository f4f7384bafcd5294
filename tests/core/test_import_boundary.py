"""The ML core is plain PyTorch: importing every module of training.core loads no Django."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import importlib, pkgutil, sys
import training.core as core
names = sorted(m.name for m in pkgutil.walk_packages(core.__path__, "training.core."))
for name in names:
    if name.endswith("__main__"):
        continue
    importlib.import_module(name)
leaked = sorted(m for m in sys.modules if m == "django" or m.startswith(("django.", "rest_framework", "channels",
                                                                           "huey", "studio", "labeling", "frontend"))
                or (m.startswith("training.") and not m.startswith("training.core")))
print(len(names), "modules")
assert not leaked, f"training.core imported web-layer modules: {leaked[:10]}"
"""


def test_core_imports_no_django():
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert int(proc.stdout.split()[0]) >= 5
