"""Where a training stage keeps its resume state, and when that state is stale.

Checkpoints live in ``checkpoints/`` relative to the directory the stage runs in (DVC's
temporary copy for queued experiments). Not a DVC out: DVC deletes outs before running a
stage, and a checkpoint must survive a killed one. Beside each open MLflow run sits its
claim, ``<name>.run.json`` (``rnnlab.tracking.store.tracked_run``).
"""

from __future__ import annotations

import logging
import os
import stat
import tempfile
from pathlib import Path

from rnnlab.core.errors import RnnlabError

log = logging.getLogger(__name__)

CHECKPOINTS = Path("checkpoints")

_KINDS = {stat.S_IFDIR: "a folder", stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket",
          stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}


def check_checkpoint_path(path: Path, desc: str) -> None:
    """Before the first epoch: ``path`` can take this run's checkpoint, or one
    ``RnnlabError`` line naming what is in the way and the fix.

    A checkpoint is written after every epoch (an atomic write: a temp file beside it,
    renamed over it), so a folder at ``path``, a file where one of its folders goes, or a
    folder this process cannot write in would otherwise fail only after the first epoch,
    with a traceback. A FIFO at ``path`` would block the read of the old checkpoint for
    good. Creates nothing: the temp file that probes the folder is removed at once.
    ``fit`` calls it; a stage may call it before it opens its MLflow run, whose claim
    (``<name>.run.json``) is written into the same folder.
    """
    path = Path(path)
    nearest = None                       # the deepest folder of ``path`` that exists
    for folder in reversed(path.parents):
        try:
            mode = folder.stat().st_mode
        except FileNotFoundError:
            break                        # it and those below it are created at the first write
        except OSError as e:
            raise RnnlabError(f"{desc}: cannot reach the checkpoint {path}: {folder}: "
                              f"{e.strerror}; fix the path or its permissions") from None
        if not stat.S_ISDIR(mode):
            raise RnnlabError(f"{desc}: {folder} is {_KINDS.get(stat.S_IFMT(mode), 'a file')}, "
                              f"where the folder of the checkpoint {path} goes; remove or "
                              "rename it, then rerun")
        nearest = folder
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        pass
    except OSError as e:
        raise RnnlabError(f"{desc}: cannot reach the checkpoint {path}: {e.strerror}; fix "
                          "the path or its permissions") from None
    else:
        if not stat.S_ISREG(mode):
            raise RnnlabError(f"{desc}: {path} is {_KINDS.get(stat.S_IFMT(mode), 'not a file')}, "
                              "where this run writes its checkpoint file after every epoch; "
                              "remove or rename it, then rerun")
    if nearest is None:
        return
    try:
        if nearest == path.parent:       # a real write: root passes every os.access check
            fd, probe = tempfile.mkstemp(dir=nearest, prefix=f".{path.name}.", suffix=".part")
            os.close(fd)
            os.unlink(probe)
        elif not os.access(nearest, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as e:
        raise RnnlabError(f"{desc}: cannot write the checkpoint {path} in {nearest} "
                          f"({e.strerror}); make {nearest} writable, then rerun") from None


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
