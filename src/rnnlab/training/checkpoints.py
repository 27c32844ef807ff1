"""Where a training stage keeps its resume state, and when that state is stale.

Checkpoints live in ``checkpoints/`` relative to the directory the stage runs in (DVC's
temporary copy for queued experiments). Not a DVC out: DVC deletes outs before running a
stage, and a checkpoint must survive a killed one. Beside each open MLflow run sits its
claim, ``<name>.run.json`` (``rnnlab.tracking.store.tracked_run``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

CHECKPOINTS = Path("checkpoints")


def remove_superseded(checkpoints: Path) -> list[Path]:
    """Delete each checkpoint whose variant's metrics file was written after it, and the
    temp files that writes killed midway left, unless a live claim holds that variant;
    return what was deleted.

    DVC deletes a stage's outputs before it runs the stage, so while a checkpoint is worth
    resuming its metrics file is missing (or, outside DVC, older). A metrics file written
    after the checkpoint came from a finished run (which deletes its checkpoints itself) or
    from a DVC run-cache restore, which runs no code of ours: the checkpoint is then stale,
    and the next training stage removes it (before it resumes anything). ``st_ctime`` (of the link itself) also moves
    when DVC restores by hardlink or symlink, where the file's mtime may be old.
    """
    metrics, removed = checkpoints.parent / "metrics", []

    def claimed(name: str) -> bool:      # a live attempt's (dead ones' claims are gone)
        return (checkpoints / f"{name}.run.json").exists()

    for temp in sorted(checkpoints.glob(".*.part")):   # a kill during an atomic write
        owner = temp.name[1:].rsplit(".", 2)[0]          # ".gru.pt.x1y2.part" -> "gru.pt"
        if not claimed(owner.removesuffix(".pt").removesuffix(".run.json")):
            temp.unlink(missing_ok=True)
            log.info("removed %s: the temp file of an interrupted write", temp)
            removed.append(temp)
    for path in sorted(checkpoints.glob("*.pt")):
        name = path.name[:-len(".pt")]
        variant = name.split(".seed", 1)[0]
        if claimed(name):
            continue
        try:
            written_after = (os.lstat(metrics / f"{variant}.json").st_ctime_ns
                             > path.stat().st_mtime_ns)
        except OSError:
            continue                     # no metrics: the checkpoint may still be resumed
        if written_after:
            path.unlink(missing_ok=True)
            log.info("removed %s: %s was written after it (a DVC run-cache restore or a "
                     "finished run), so it can no longer be resumed", path,
                     metrics / f"{variant}.json")
            removed.append(path)
    return removed
