"""One builder per model: claim files that outlive neither their holder nor its heartbeat.

Before training model ``<id>``, a builder process creates ``build/claims/<id>.<n>.claim`` (``n``
the claim's generation) holding its host, pid, process start and claim time. The file is written
under a temporary name and hard-linked into place, so it appears whole or not at all, and only one
process can create a given generation: the hard link is the atomic create-if-absent that works on
NFS too (``O_EXCL`` and ``fcntl`` locks are not reliable on every shared filesystem). While the
model trains, a thread refreshes the file's modification time (the heartbeat).

A claim is stale, and the next generation may be created by anyone, when its holder is gone:

- on the same host (same boot): its pid no longer runs that process (dead, a zombie, or reused);
- on another host, or after a reboot: its heartbeat is older than the timeout
  (``$NWA_ZOO_CLAIM_TIMEOUT`` seconds, default 120).

Assumptions on a shared filesystem: hard links are atomic (NFSv3 and later; Lustre, GPFS,
BeeGFS), the clocks of the hosts and the file server agree to well within the timeout (NTP), and
host names are unique. Should they not hold, two builders may train one model; both write the
same bytes by atomic renames, so the zoo stays correct and only time is lost.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

TIMEOUT_ENV = "NWA_ZOO_CLAIM_TIMEOUT"
DEFAULT_TIMEOUT = 120.0
HOST = platform.node()


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _proc_start(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), ``""`` if unknown or gone."""
    stat = _read(f"/proc/{pid}/stat")
    # the command name (field 2) may hold spaces and parentheses: split after its last ")"
    fields = stat.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 and fields[0] != "Z" else ""


BOOT = _read("/proc/sys/kernel/random/boot_id")


def _alive(pid: int, start: str) -> bool:
    """Whether ``pid`` still runs the process that started at ``start`` (on this host)."""
    if os.path.isdir("/proc/self"):
        now = _proc_start(pid)
        return bool(now) and (not start or now == start)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def create_exclusive(path: Path, text: str) -> bool:
    """Create ``path`` holding ``text`` unless it exists; ``True`` if this call created it.

    The text is written under a temporary name and hard-linked into place: the file appears whole
    or not at all, and of concurrent callers (on NFS too) exactly one succeeds.
    """
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(text)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class Holder:
    """Who holds a claim.

    Attributes:
        host: Host name.
        pid: Process id on that host.
        since: Claim time (seconds since the epoch, the holder's clock).
        heartbeat: Latest heartbeat (the claim file's modification time).
        proc_start: The process's start time in ticks since boot (Linux), to detect pid reuse.
        boot: The host's boot id (Linux), to detect a reboot.
        path: The claim file.
    """

    host: str
    pid: int
    since: float
    heartbeat: float
    proc_start: str = ""
    boot: str = ""
    path: Path | None = None

    def describe(self) -> str:
        return (
            f"{self.host}:{self.pid} since {time.strftime('%H:%M:%S', time.localtime(self.since))}"
        )


class Claims:
    """The claims of one zoo folder, and those this process holds.

    Args:
        out: The zoo folder (claims live in ``build/claims``).
        timeout: Seconds without a heartbeat after which another host's claim expires
            (default ``$NWA_ZOO_CLAIM_TIMEOUT`` or 120).
    """

    def __init__(self, out: Path, timeout: float | None = None) -> None:
        self.dir = Path(out) / "build" / "claims"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.timeout = timeout or float(os.environ.get(TIMEOUT_ENV) or DEFAULT_TIMEOUT)
        self.held: dict[str, Path] = {}
        self._lock = threading.Lock()
        self._beat: threading.Thread | None = None

    # -- reading -------------------------------------------------------------------------------

    def _files(self, model_id: str) -> list[tuple[int, Path]]:
        out = []
        for path in self.dir.glob(f"{model_id}.*.claim"):
            gen = path.name[len(model_id) + 1 : -len(".claim")]
            if gen.isdigit():
                out.append((int(gen), path))
        return sorted(out)

    def _load(self, path: Path) -> Holder | None:
        heartbeat = time.time()  # a file that cannot be examined counts as alive
        try:
            heartbeat = path.stat().st_mtime
            info = json.loads(path.read_text())
            return Holder(
                str(info["host"]),
                int(info["pid"]),
                float(info["since"]),
                heartbeat,
                str(info.get("proc_start", "")),
                str(info.get("boot", "")),
                path,
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            # unreadable or foreign content: judged by its heartbeat alone
            return Holder("?", -1, 0.0, heartbeat, path=path)

    def stale(self, holder: Holder) -> bool:
        """Whether ``holder``'s claim has expired (see the module docstring)."""
        if holder.host == HOST:
            # a changed boot id means the host rebooted since: nothing it ran is alive
            return holder.boot != BOOT or not _alive(holder.pid, holder.proc_start)
        return time.time() - holder.heartbeat > self.timeout

    def holder(self, model_id: str) -> Holder | None:
        """The live holder of the latest claim on ``model_id``, or ``None`` (none, or stale)."""
        files = self._files(model_id)
        if not files:
            return None
        current = self._load(files[-1][1])
        return None if current is None or self.stale(current) else current

    # -- holding -------------------------------------------------------------------------------

    def claim(self, model_id: str) -> Holder | None:
        """Claim ``model_id``: ``None`` when this process now holds it, else the live holder."""
        for _ in range(3):  # lost races against other takers: look again
            files = self._files(model_id)
            gen = files[-1][0] if files else 0
            current = self._load(files[-1][1]) if files else None
            if current is not None and not self.stale(current):
                return current
            path = self.dir / f"{model_id}.{gen + 1}.claim"
            if self._create(path):
                with self._lock:
                    self.held[model_id] = path
                self._start_heartbeat()
                return None
        return self.holder(model_id) or Holder("?", -1, time.time(), time.time())

    def _create(self, path: Path) -> bool:
        pid = os.getpid()
        body = {"host": HOST, "pid": pid, "since": time.time(), "boot": BOOT}
        return create_exclusive(path, json.dumps(body | {"proc_start": _proc_start(pid)}))

    def release(self, model_id: str) -> None:
        """Drop this process's claim on ``model_id`` and the expired ones below it."""
        with self._lock:
            mine = self.held.pop(model_id, None)
        if mine is None:
            return
        gen = int(mine.name[len(model_id) + 1 : -len(".claim")])
        for g, path in self._files(model_id):
            if g <= gen:
                path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def hold(self, model_id: str) -> Iterator[Holder | None]:
        """``with claims.hold(id) as other:`` ``other`` is ``None`` while this process holds it."""
        other = self.claim(model_id)
        try:
            yield other
        finally:
            if other is None:
                self.release(model_id)

    def _start_heartbeat(self) -> None:
        with self._lock:
            if self._beat is not None and self._beat.is_alive():
                return
            self._beat = threading.Thread(target=self._heartbeat, name="nwa-claims", daemon=True)
            self._beat.start()

    def _heartbeat(self) -> None:
        interval = max(0.5, min(10.0, self.timeout / 10))
        while True:
            time.sleep(interval)
            with self._lock:
                paths = list(self.held.values())
                if not paths:
                    self._beat = None
                    return
            for path in paths:
                with contextlib.suppress(FileNotFoundError):
                    os.utime(path)
