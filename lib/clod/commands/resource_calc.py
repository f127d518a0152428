"""resource-calc: how many CPUs and how much memory the guest gets.

Usage:
  resource-calc [options] [--cpus | --memory | --json]

Prints guest CPUs then memory in MiB, one per line; --cpus or --memory prints
just that number, e.g.  tart set vm --memory "$(resource-calc --memory)".

Defaults: every logical CPU of the host (its affinity and cgroup cpu.max
limit included) and 5/8 of its RAM (cgroup memory.max included), in MiB.

Options:
  --cpus           print only the CPU count
  --memory         print only the memory, in MiB
  --json           {"cpus": N, "memory_mib": N, "host_cpus": N, "host_memory_mib": N}
  --guest=OS       macos or linux: sets the minimum memory [default: auto]
  -q --quiet       only errors on stderr
  -v --verbose     more detail on stderr
  --debug          tracebacks on error
  -h --help        show this help

Environment:
  CLOD_CPUS     guest CPUs, 1..host CPUs
  CLOD_MEMORY   guest memory: 8G, 8192M, or 8192 (a bare number is MiB);
                at least 2048 MiB for macOS, 1024 MiB for Linux, at most host RAM
"""

import json

from clod import backend, cli, log
from clod.errors import ClodError
from clod.resources import MIB, configured


def run(args):
    guest_os = args["--guest"]
    if guest_os == "auto":
        guest_os = backend.guest_os()
    if guest_os not in ("macos", "linux"):
        raise ClodError(f"--guest={guest_os!r}: use macos or linux", exit_code=2)
    host, size = configured(guest_os)
    log.verbose(f"host: {host.cpus} CPUs, {host.memory_bytes // MIB} MiB; guest ({guest_os}): {size.cpus} CPUs, {size.memory_mib} MiB")
    if args["--json"]:
        print(json.dumps({"cpus": size.cpus, "memory_mib": size.memory_mib, "host_cpus": host.cpus, "host_memory_mib": host.memory_bytes // MIB}))
    elif args["--cpus"]:
        print(size.cpus)
    elif args["--memory"]:
        print(size.memory_mib)
    else:
        print(size.cpus)
        print(size.memory_mib)


def main():
    cli.main(__doc__, run, "resource-calc")
