"""CPU time from /proc, for the benchmarks' notes on how busy the machine was: stolen time (a virtual
machine's CPUs given to someone else) and time other processes used (another workload beside the benchmark)."""

from __future__ import annotations

from collections.abc import Sequence


def proc_stat_cpu() -> list[int] | None:
    """The whole machine's CPU time from /proc/stat's first line (user, nice, system, idle, iowait, irq,
    softirq, steal), in jiffies; None where there is none."""
    try:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None


def cpu_jiffies() -> tuple[int, int] | None:
    """(steal, total) CPU time of the whole machine from /proc/stat, in jiffies; None where there is none.
    Steal is time the hypervisor gave this virtual machine's CPUs to someone else."""
    fields = proc_stat_cpu()
    if fields is None:
        return None
    return (fields[7] if len(fields) > 7 else 0), sum(fields)


def steal_percent(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """Share of the CPU time between two `cpu_jiffies` readings that was stolen, in percent."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return round(100 * (after[0] - before[0]) / (after[1] - before[1]), 1)


def busy_jiffies(pids: Sequence[int]) -> tuple[int, int, int] | None:
    """(busy, total) CPU time of the whole machine (/proc/stat) and the CPU time of the processes `pids`
    (/proc/<pid>/stat, threads included), all in clock ticks; None where /proc has none of it."""
    fields = proc_stat_cpu()
    if fields is None:
        return None
    try:
        ours = 0
        for pid in pids:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
            ours += int(stat[11]) + int(stat[12])  # utime, stime
    except (OSError, ValueError, IndexError):
        return None
    total = sum(fields)
    return total - fields[3] - fields[4], total, ours  # busy = all but idle and iowait


def foreign_percent(before: tuple[int, int, int] | None, after: tuple[int, int, int] | None) -> float | None:
    """Share of the machine's CPU time between two `busy_jiffies` readings that processes other than the
    benchmark's own used, in percent: another workload on the machine, which makes the figures unreliable."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    foreign = (after[0] - before[0]) - (after[2] - before[2])
    return round(max(0.0, 100 * foreign / (after[1] - before[1])), 1)
