"""How big the guest is: host facts in, guest CPUs and memory out.

Defaults: every host logical CPU, and 5/8 of host RAM (integer MiB, computed
on bytes so 16 GiB gives exactly 10240). Overrides CLOD_CPUS and CLOD_MEMORY
are validated against the host with the numbers in the error.
"""

import os
import platform
import re
from dataclasses import dataclass
from fractions import Fraction

MIB = 1 << 20
MIN_MEMORY_MIB = {"macos": 2048, "linux": 1024}
UNITS = {"": MIB, "K": 1 << 10, "M": MIB, "G": 1 << 30, "T": 1 << 40}
# Which cgroup this process is in; a constant so tests can point it at a fake.
SELF_CGROUP = "/proc/self/cgroup"
MEMORY_SYNTAX = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


@dataclass
class HostFacts:
    cpus: int
    memory_bytes: int


@dataclass
class GuestSize:
    cpus: int
    memory_mib: int


class SizeError(ValueError):
    """A bad override; the message carries the numbers."""


def default_memory_mib(host_bytes: int) -> int:
    return host_bytes * 5 // 8 // MIB


def parse_memory(text: str) -> int:
    """MiB from `8G`, `8192M`, `8192` (a bare number is MiB), `1.5G`."""
    match = MEMORY_SYNTAX.match(text)
    if not match:
        raise SizeError(f"CLOD_MEMORY={text!r} is not a size; use e.g. 8G, 8192M or 8192 (MiB)")
    number, unit = Fraction(match.group(1)), match.group(2).upper()
    return int(number * UNITS[unit] // MIB)


def guest_size(host: HostFacts, guest_os: str, cpus: str | None = None, memory: str | None = None) -> GuestSize:
    host_mib = host.memory_bytes // MIB
    size = GuestSize(cpus=host.cpus, memory_mib=default_memory_mib(host.memory_bytes))
    if memory is not None and memory != "":
        wanted = parse_memory(memory)
        minimum = MIN_MEMORY_MIB[guest_os]
        if wanted < minimum:
            raise SizeError(
                f"CLOD_MEMORY={memory} is {wanted} MiB; a {guest_os} guest needs at least {minimum} MiB "
                f"(a bare number means MiB: write {memory}G for gigabytes)"
            )
        if wanted > host_mib:
            raise SizeError(f"CLOD_MEMORY={memory} is {wanted} MiB, more than this host's {host_mib} MiB of RAM")
        size.memory_mib = wanted
    if cpus is not None and cpus != "":
        if not re.fullmatch(r"\s*\d+\s*", cpus):
            raise SizeError(f"CLOD_CPUS={cpus!r} is not a whole number of CPUs (1..{host.cpus})")
        wanted = int(cpus)
        if not 1 <= wanted <= host.cpus:
            raise SizeError(f"CLOD_CPUS={cpus} is outside 1..{host.cpus} (this host has {host.cpus} CPUs)")
        size.cpus = wanted
    return size


def configured(guest_os: str) -> tuple[HostFacts, GuestSize]:
    """This host's facts and the guest size with CLOD_CPUS / CLOD_MEMORY
    applied; a bad override is an error that shows the numbers."""
    from clod.errors import ClodError

    try:
        host = host_facts()
        return host, guest_size(host, guest_os, os.environ.get("CLOD_CPUS"), os.environ.get("CLOD_MEMORY"))
    except SizeError as err:
        raise ClodError(str(err), hint="fix or unset CLOD_CPUS / CLOD_MEMORY") from None


# ---------------------------------------------------------------- host facts


def host_facts(system: str | None = None) -> HostFacts:
    system = system or os.environ.get("CLOD_HOST_SYSTEM") or platform.system()
    if system == "Darwin":
        return darwin_facts()
    return linux_facts()


def darwin_facts() -> HostFacts:
    from clod import proc  # the one subprocess choke point: a failure is one readable line

    out = proc.run(["sysctl", "-n", "hw.ncpu", "hw.memsize"]).stdout.split()
    if len(out) != 2 or not all(word.isdigit() for word in out):
        raise SizeError(f"'sysctl -n hw.ncpu hw.memsize' printed {' '.join(out)!r}, not two numbers")
    return HostFacts(cpus=int(out[0]), memory_bytes=int(out[1]))


def linux_facts(proc: str = "/proc", cgroup: str = "/sys/fs/cgroup") -> HostFacts:
    return HostFacts(cpus=linux_cpus(cgroup), memory_bytes=linux_memory(proc, cgroup))


def linux_cpus(cgroup: str = "/sys/fs/cgroup") -> int:
    cpus = len(os.sched_getaffinity(0))
    quota = _cgroup_cpu_limit(cgroup)
    return max(1, min(cpus, quota)) if quota else cpus


def linux_memory(proc: str = "/proc", cgroup: str = "/sys/fs/cgroup") -> int:
    with open(os.path.join(proc, "meminfo")) as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                total = int(line.split()[1]) * 1024
                break
        else:
            raise SizeError(f"no MemTotal in {proc}/meminfo")
    limit = _cgroup_memory_limit(cgroup)
    return min(total, limit) if limit else total


def _own_cgroup_dir(cgroup: str) -> str:
    # cgroup v2: /proc/self/cgroup has one line "0::/path".
    try:
        with open(SELF_CGROUP) as own:
            for line in own:
                if line.startswith("0::"):
                    return os.path.join(cgroup, line[3:].strip().lstrip("/"))
    except OSError:
        pass
    return cgroup


def _read_first(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _cgroup_cpu_limit(cgroup: str) -> int | None:
    for directory in (_own_cgroup_dir(cgroup), cgroup):
        value = _read_first(os.path.join(directory, "cpu.max"))
        if value:
            quota, _, period = value.partition(" ")
            if quota != "max":
                return -(-int(quota) // int(period or 100000))  # ceiling
    return None


def _cgroup_memory_limit(cgroup: str) -> int | None:
    for directory in (_own_cgroup_dir(cgroup), cgroup):
        value = _read_first(os.path.join(directory, "memory.max"))
        if value and value != "max":
            return int(value)
    return None
