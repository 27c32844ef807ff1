"""Importing any module of the library only defines things: no environment variable,
log level or filter, torch switch or compiled code changes (nanoGPT's rule; the process
set-up belongs to the entry points: stages/_params.py's run_stage, the tools' mains)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

LIBRARY = Path(__file__).resolve().parents[1] / "src" / "rnnlab"
MODULES = sorted(".".join(p.relative_to(LIBRARY.parent).with_suffix("").parts)
                 for p in LIBRARY.rglob("*.py") if p.name != "__init__.py")

PROBE = """
import json, logging, os, sys, torch
from rnnlab.training.process import flushing_denormals

def state():
    loggers = {n: (logging.getLogger(n).level, len(logging.getLogger(n).filters))
               for n in ("", "mlflow", "mlflow.store.db.utils", "urllib3.connectionpool")}
    # polars' own import sets its allocator's _RJEM_MALLOC_CONF: not ours to judge
    env = {k: v for k, v in os.environ.items() if not k.startswith("_RJEM_")}
    return {"env": env, "loggers": loggers,
            "handlers": len(logging.getLogger().handlers), "threads": torch.get_num_threads(),
            "denormals": flushing_denormals(), "jit": len(torch.jit._state._jit_caching_layer)
            if hasattr(torch.jit._state, "_jit_caching_layer") else 0}

before = state()
for name in sys.argv[1:]:
    __import__(name)
after = state()
changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
if "env" in changed:
    b, a = changed["env"]
    changed["env"] = {k: (b.get(k), a.get(k)) for k in set(a) | set(b) if a.get(k) != b.get(k)}
print(json.dumps(changed, default=str))
"""


def test_importing_every_module_changes_no_process_state():
    done = subprocess.run([sys.executable, "-c", PROBE, *MODULES], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {}
