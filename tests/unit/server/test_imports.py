"""The API process must stay light: no torch, no model, no worker code."""

from __future__ import annotations

import subprocess
import sys


def test_server_app_does_not_import_torch_model_or_worker() -> None:
    code = (
        "import sys, server.app, server.stack\n"
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith(('model', 'worker'))]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""
