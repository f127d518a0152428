"""tart-wrap / qemu-wrap: one VM tool behind clod's verbs, for people and pipelines.

Usage:
  {prog} list [options]
  {prog} get [options] <vm>
  {prog} clone [options] <source> <new>
  {prog} set [options] <vm> [--cpu=<n>] [--memory=<mib>] [--random-mac]
  {prog} run [options] <vm> [--no-graphics] [--dir=<name:path>...]
  {prog} ip [options] <vm> [--wait=<s>]
  {prog} ssh-endpoint [options] <vm> [--wait=<s>]
  {prog} stop [options] <vm> [--timeout=<s>]
  {prog} delete [options] <vm>
  {prog} rename [options] <vm> <new>
  {prog} exec [options] <vm> <cmd>...
  {prog} prune [options] [<arg>...]
  {prog} (-h | --help)

Verbs print JSON where the caller needs data (list, get, ssh-endpoint) and
nothing otherwise; errors say what to do. `run` starts the VM in the
background and returns once it runs, or fails with the tool's own error.

Options:
  --wait=<s>      seconds to wait for an address [default: 60]
  --timeout=<s>   seconds a VM gets to stop before it is killed [default: 30]
  -q --quiet      only errors on stderr
  -v --verbose    more detail on stderr
  --debug         log every command run, and tracebacks
  -h --help       show this help
"""

import json
import sys

from clod import cli
from clod.errors import ClodError


def parse_dir(spec: str) -> tuple[str, str]:
    name, sep, path = spec.partition(":")
    if not sep or not name or not path:
        raise ClodError(f"--dir={spec!r}: expected NAME:PATH", exit_code=2)
    return name, path


def verbs(driver):
    def out(data):
        json.dump(data, sys.stdout, indent=2, ensure_ascii=False)
        print()

    def memory(args):
        return int(args["--memory"]) if args["--memory"] else None

    return {
        "list": lambda a: out(driver.list()),
        "get": lambda a: out(driver.get(a["<vm>"])),
        "clone": lambda a: driver.clone(a["<source>"], a["<new>"]),
        "set": lambda a: driver.set(a["<vm>"], cpus=int(a["--cpu"]) if a["--cpu"] else None, memory_mib=memory(a),
                                    random_mac=a["--random-mac"]),  # fmt: skip
        "run": lambda a: driver.run(a["<vm>"], [parse_dir(d) for d in a["--dir"]], graphics=not a["--no-graphics"]),
        "ip": lambda a: print(driver.ssh_endpoint(a["<vm>"], wait=int(a["--wait"]))["host"]),
        "ssh-endpoint": lambda a: out(driver.ssh_endpoint(a["<vm>"], wait=int(a["--wait"]))),
        "stop": lambda a: driver.stop(a["<vm>"], timeout=int(a["--timeout"])),
        "delete": lambda a: driver.delete(a["<vm>"]),
        "rename": lambda a: driver.rename(a["<vm>"], a["<new>"]),
        "exec": lambda a: driver.exec(a["<vm>"], a["<cmd>"]),
        "prune": lambda a: driver.prune(*a["<arg>"]),
    }


def main_for(prog: str, make_driver):
    doc = __doc__.replace("{prog}", prog).replace("tart-wrap / qemu-wrap", prog, 1)

    def dispatch(args):
        table = verbs(make_driver())
        verb = next(v for v in table if args[v])
        return table[verb](args)

    cli.main(doc, dispatch, prog)


def tart_main():
    from clod.tart import TartDriver

    main_for("tart-wrap", TartDriver)


def qemu_main():
    def make():
        from clod.qemu import QemuDriver

        return QemuDriver()

    main_for("qemu-wrap", make)
