"""What this machine has: the memory a process may still allocate (MemAvailable and every
cgroup memory limit over it). Used by the stages' pre-flight checks (``rnnlab.training.memory``
for training, ``rnnlab.data.imdb`` for tokenisation) to refuse sizes that cannot fit."""

from __future__ import annotations

from pathlib import Path

from rnnlab.core.errors import RnnlabError

# A limit this large (cgroup v1 writes 2^63 rounded to a page for "none") is no limit.
NO_LIMIT = 1 << 60


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _meminfo(proc: Path) -> dict[str, int]:
    """/proc/meminfo as bytes per field."""
    fields = {}
    for line in (_read(proc / "meminfo") or "").splitlines():
        name, _, rest = line.partition(":")
        number = rest.split()
        if number and number[0].isdigit():
            fields[name] = int(number[0]) * (1024 if rest.strip().endswith("kB") else 1)
    return fields


def _stat_value(text: str | None, name: str) -> int:
    for line in (text or "").splitlines():
        key, _, value = line.partition(" ")
        if key == name and value.strip().isdigit():
            return int(value)
    return 0


def _cgroup_room(proc: Path) -> list[tuple[int, str]]:
    """(bytes left, the cgroup folder) for each memory limit over this process: cgroup v2
    (``memory.max`` of its cgroup and every parent) and v1 (``memory.limit_in_bytes``).
    Left = limit - usage + inactive file cache (the kernel reclaims that before it kills)."""
    found: list[tuple[int, str]] = []
    mounts = []                                  # (root inside the hierarchy, mount point, v2?)
    for line in (_read(proc / "self" / "mountinfo") or "").splitlines():
        left, _, right = line.partition(" - ")
        fields, kind = left.split(), right.split()
        if len(fields) < 5 or len(kind) < 3:
            continue
        if kind[0] == "cgroup2":
            mounts.append((fields[3], fields[4], True))
        elif kind[0] == "cgroup" and "memory" in kind[2].split(","):
            mounts.append((fields[3], fields[4], False))
    for line in (_read(proc / "self" / "cgroup") or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        v2 = parts[0] == "0" and parts[1] == ""
        if not v2 and "memory" not in parts[1].split(","):
            continue
        for root, point, is_v2 in mounts:
            if is_v2 != v2 or not (parts[2] + "/").startswith(root.rstrip("/") + "/"):
                continue
            rel = parts[2][len(root.rstrip("/")):].strip("/")
            folder = Path(point, rel) if rel else Path(point)
            while True:                          # v2: every parent's limit applies too
                if v2:
                    limit, usage = _read(folder / "memory.max"), _read(folder / "memory.current")
                    cache = _stat_value(_read(folder / "memory.stat"), "inactive_file")
                else:
                    limit = _read(folder / "memory.limit_in_bytes")
                    usage = _read(folder / "memory.usage_in_bytes")
                    stat = _read(folder / "memory.stat")
                    cache = _stat_value(stat, "total_inactive_file")
                    hierarchical = _stat_value(stat, "hierarchical_memory_limit")
                    if hierarchical and (not limit or not limit.strip().isdigit()
                                         or hierarchical < int(limit)):
                        limit = str(hierarchical)
                if limit and usage and limit.strip().isdigit() and usage.strip().isdigit() \
                        and int(limit) < NO_LIMIT:
                    found.append((max(int(limit) - int(usage) + cache, 0),
                                  f"the memory limit of cgroup {folder}"))
                if not v2 or folder == Path(point):
                    break
                folder = folder.parent
            break
    return found


def available_bytes(proc: Path = Path("/proc")) -> tuple[int, str]:
    """What this process may still allocate, and where the figure comes from: the least of
    ``MemAvailable`` (/proc/meminfo) and the room under each cgroup memory limit over it."""
    info = _meminfo(proc)
    room = [(info["MemAvailable"], "available (MemAvailable)")] if "MemAvailable" in info \
        else [(info["MemFree"], "free (MemFree)")] if "MemFree" in info else []
    room += [(left, f"available under {where}") for left, where in _cgroup_room(proc)]
    if not room:
        raise RnnlabError(f"cannot tell how much memory this machine has: no {proc}/meminfo")
    return min(room)


def gigabytes(n: int) -> str:
    """``41.2 GB`` (``MB`` below 0.1 GB, ``TB`` from 1000 GB)."""
    if n >= 1e12:
        return f"{n / 1e12:,.1f} TB"
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"
