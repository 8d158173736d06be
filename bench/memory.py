"""Memory of a system under test: PSS summed over a process and all its descendants, sampled
from ``/proc/PID/smaps_rollup`` in a background thread.

PSS (proportional set size) charges each shared page to the processes that map it in equal
parts, so the sum over many processes that share libraries and copy-on-write pages (Postfix's
master and its dozens of children) counts each page once: it is the fair measure for comparing
one Python process with a family of C processes.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass


def _read(path: str) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # the process exited meanwhile
        return None
    try:
        return os.read(fd, 8192)
    except OSError:
        return None
    finally:
        os.close(fd)


def parent_map(known: dict[int, int] | None = None) -> dict[int, int]:
    """pid -> parent pid of every process on the machine; parents in ``known`` (from an earlier
    call) are reused, so that a sample reads the stat file of new processes only."""
    known = {} if known is None else known
    parents: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        ppid = known.get(pid)
        if ppid is None:
            text = _read(f"/proc/{name}/stat")
            if text is None:
                continue
            # The command name is parenthesised and may contain spaces: split after its end.
            ppid = int(text[text.rfind(b")") + 2 :].split()[1])
        parents[pid] = ppid
    return parents


def descendants(roots: Iterable[int], parents: dict[int, int] | None = None) -> set[int]:
    """``roots`` and every process below them (only the living ones)."""
    parents = parent_map() if parents is None else parents
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    stack = [pid for pid in roots if pid in parents]
    while stack:
        pid = stack.pop()
        if pid in found:
            continue
        found.add(pid)
        stack.extend(children.get(pid, ()))
    return found


_TICKS = os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(roots: Iterable[int]) -> float:
    """CPU time (user + system) used so far by the trees under ``roots``: each living process's
    own time plus that of its children that exited and were reaped (cutime, cstime). The
    difference of two calls is what the system used in between, short-lived processes included.
    """
    return sum(tree_cpu_split(roots))


def tree_cpu_split(roots: Iterable[int]) -> tuple[float, float]:
    """`tree_cpu_seconds` as (user, system) seconds."""
    user = system = 0
    for pid in descendants(roots):
        text = _read(f"/proc/{pid}/stat")
        if text is None:
            continue
        fields = text[text.rfind(b")") + 2 :].split()
        # Fields 14-17 of proc(5) (utime, stime, cutime, cstime); fields here start at 3.
        user += int(fields[11]) + int(fields[13])
        system += int(fields[12]) + int(fields[14])
    return user / _TICKS, system / _TICKS


@dataclass(frozen=True, slots=True)
class ThreadCounters:
    """CPU time and context switches of one process, its main thread apart from the others
    (for mailgate, the event loop against its worker threads). Threads that ended are not
    counted: take the difference of two readings over a window in which none ends."""

    main_user: float  # seconds
    main_system: float
    main_voluntary: int  # the thread went to sleep (waited for I/O, a lock, the loop's epoll)
    main_involuntary: int  # the scheduler took the CPU from it (preempted)
    others_user: float
    others_system: float
    others_voluntary: int
    others_involuntary: int

    def minus(self, earlier: ThreadCounters) -> ThreadCounters:
        return ThreadCounters(*(
            getattr(self, name) - getattr(earlier, name) for name in self.__slots__
        ))  # fmt: skip


def thread_counters(pid: int) -> ThreadCounters | None:
    """The counters of process ``pid``, or None if it is gone."""
    main = [0, 0, 0, 0]
    others = [0, 0, 0, 0]
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for name in threads:
        stat = _read(f"/proc/{pid}/task/{name}/stat")
        status = _read(f"/proc/{pid}/task/{name}/status")
        if stat is None or status is None:
            continue  # the thread ended meanwhile
        fields = stat[stat.rfind(b")") + 2 :].split()
        switches = [_status_number(status, key) for key in _SWITCHES]
        into = main if int(name) == pid else others
        for index, value in enumerate((int(fields[11]), int(fields[12]), *switches)):
            into[index] += value
    return ThreadCounters(
        main[0] / _TICKS, main[1] / _TICKS, main[2], main[3],
        others[0] / _TICKS, others[1] / _TICKS, others[2], others[3],
    )  # fmt: skip


_SWITCHES = (b"\nvoluntary_ctxt_switches:", b"\nnonvoluntary_ctxt_switches:")


def _status_number(status: bytes, key: bytes) -> int:
    start = status.find(key)
    if start < 0:
        return 0
    start += len(key)
    end = status.find(b"\n", start)
    return int(status[start : end if end >= 0 else None])


_FIELDS = (b"Rss", b"Pss", b"Pss_Anon", b"Pss_File")


def rollup_kib(pid: int) -> dict[str, int] | None:
    """RSS, PSS and PSS split into anonymous and file-backed memory of ``pid``, in KiB; None if
    it is gone (or a zombie without memory)."""
    text = _read(f"/proc/{pid}/smaps_rollup")
    if text is None:
        return None
    values: dict[str, int] = {}
    for field in _FIELDS:
        start = text.find(b"\n" + field + b":")
        if start < 0:
            return None
        start += len(field) + 2
        values[field.decode()] = int(text[start : text.index(b"kB", start)])
    return values


def pss_kib(pid: int) -> int | None:
    """The PSS of ``pid`` in KiB, or None if it is gone."""
    values = rollup_kib(pid)
    return None if values is None else values["Pss"]


@dataclass(frozen=True, slots=True)
class MemorySummary:
    peak_pss_kib: int
    peak_processes: int  # processes in the tree at the peak sample
    max_processes: int
    # Peaks of the other sums (each at its own sample). PSS shares a page among every process
    # that maps it, harness processes included: mailgate's interpreter and libraries are also
    # mapped by the benchmark's own Python processes, which lowers its Pss_File. Pss_Anon (heap
    # and stacks) does not depend on that; RSS counts shared pages in full (an upper bound).
    peak_pss_anon_kib: int
    peak_pss_file_kib: int
    peak_rss_kib: int
    samples: int
    sampler_cpu_seconds: float  # the sampler's own CPU time, taken from the machine


class PssSampler:
    """Samples the PSS of the process trees under ``roots()`` every ``interval`` seconds.

    Reading smaps_rollup makes the kernel walk each process's page tables: for Postfix's 130-odd
    processes one sample costs ~10 ms of CPU, taken from the 2 cores the system under test
    needs. So the pause after a sample grows to keep the sampler's CPU under ``max_duty`` of
    one core; the summary says how many samples were taken.
    """

    def __init__(
        self, roots: Callable[[], list[int]], interval: float = 0.1, max_duty: float = 0.05
    ) -> None:
        self._roots = roots
        self._interval = interval
        self._max_duty = max_duty
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._peak = 0
        self._peaks = {"Pss_Anon": 0, "Pss_File": 0, "Rss": 0}
        self._peak_processes = 0
        self._max_processes = 0
        self._samples = 0
        self._cpu = 0.0
        self._parents: dict[int, int] = {}

    def sample(self) -> float:
        """Take one sample; return the CPU time it cost."""
        began = time.thread_time()
        self._parents = parent_map(self._parents)
        pids = descendants(self._roots(), self._parents)
        sums = dict.fromkeys(("Pss", *self._peaks), 0)
        for pid in pids:
            values = rollup_kib(pid)
            if values is not None:
                for key in sums:
                    sums[key] += values[key]
        for key in self._peaks:
            self._peaks[key] = max(self._peaks[key], sums[key])
        total = sums["Pss"]
        if total > self._peak:
            self._peak = total
            self._peak_processes = len(pids)
        self._max_processes = max(self._max_processes, len(pids))
        self._samples += 1
        spent = time.thread_time() - began
        self._cpu += spent
        return spent

    def _run(self) -> None:
        while True:
            spent = self.sample()
            pause = max(self._interval, spent / self._max_duty - spent)
            if self._stop.wait(pause):
                return

    def start(self) -> PssSampler:
        self._thread = threading.Thread(target=self._run, name="pss-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> MemorySummary:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None
        self.sample()  # one last time, after the run
        return MemorySummary(
            peak_pss_kib=self._peak,
            peak_processes=self._peak_processes,
            max_processes=self._max_processes,
            peak_pss_anon_kib=self._peaks["Pss_Anon"],
            peak_pss_file_kib=self._peaks["Pss_File"],
            peak_rss_kib=self._peaks["Rss"],
            samples=self._samples,
            sampler_cpu_seconds=self._cpu,
        )
