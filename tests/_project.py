"""A fresh copy of this project in a new git repo, and the tools run inside it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from rnnlab.data.synthetic import write_imdb_tarball

ROOT = Path(__file__).resolve().parents[1]
SMALL_JENA = {"lookback": 144, "step": 6, "delay": 24, "train_rows": [0, 2500],
              "val_rows": [2501, 3800], "test_rows": [3801, None]}


def project_copy(dest: Path) -> Path:
    """The repository's files as a fresh clone would have them, in a new git repo."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


def env_for_tools() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env |= {"DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
            "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t.invalid",
            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t.invalid"}
    return env


def sh(repo: Path, *cmd: str, check: bool = True, env: dict[str, str] | None = None,
       timeout: float = 3600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=repo, env=env_for_tools() | (env or {}),
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def run_queue(repo: Path, env: dict[str, str] | None = None, polls: int = 150) -> str:
    """`dvc queue start -j 2` with one torch thread per worker; waits for the workers (they
    run in the background) and returns the last `dvc queue status`."""
    sh(repo, "dvc", "queue", "start", "-j", "2", env={"OMP_NUM_THREADS": "1"} | (env or {}))
    for _ in range(polls):
        status = sh(repo, "dvc", "queue", "status").stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(2)
    return status


def set_params(repo: Path, **sections) -> None:
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for dotted, value in sections.items():
        node = params
        *parents, last = dotted.split("__")
        for key in parents:
            node = node[key]
        node[last] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))



# Tiny training: one short epoch per variant, a short gradients stage.
TRAIN_CAPS = {"train__max_epochs": 1, "train__steps_per_epoch": 3, "train__max_eval_batches": 2,
              "gradients__distance": 10, "gradients__train_steps": 5, "gradients__batches": 2,
              "gradients__explode__steps": 10}


def small_project(dest: Path, server, small_jena_zip: tuple[Path, str]) -> Path:
    """A fresh copy of the project (one commit) whose params point at small archives that
    ``server`` (a LoopbackServer) serves: a 5,000-row Jena zip and 80 generated reviews."""
    repo = project_copy(dest)
    zip_path, md5 = small_jena_zip
    shutil.copy(zip_path, server.root / "jena.zip")
    imdb_md5 = write_imdb_tarball(server.root / "imdb.tar.gz", per_class=40, seed=2)
    set_params(repo, data__jena__url=server.url("jena.zip"), data__jena__md5=md5,
               data__imdb__url=server.url("imdb.tar.gz"), data__imdb__md5=imdb_md5,
               imdb__maxlen=60, imdb__max_features=300,
               **{f"jena__{k}": v for k, v in SMALL_JENA.items()})
    sh(repo, "git", "init", "-q")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "initial")
    return repo
