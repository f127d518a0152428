"""clod: run Claude Code (or any command) unattended inside a VM.

Usage:
  clod run [options] [--no-graphics] [--rebuild-dst | --rebuild-base] [--project=<dir>] [--] [<cmd>...]
  clod shell [options] [--no-graphics] [--project=<dir>]
  clod stop [options] [--timeout=<s>]
  clod add [options] <dir> [<name>]
  clod remove [options] <dir-or-name>
  clod list [options] [--json]
  clod (-h | --help)

Commands:
  run      map the project (default: the current directory, or its git
           top-level), build the VM images if needed, start the VM if needed,
           and run Claude Code with --dangerously-skip-permissions in
           ~/projects/<name>/<the same subdirectory>. After --, run CMD instead.
           The exit status is the command's.
  shell    a login shell there instead
  stop     stop every clod VM (the guest's disks are flushed first); idempotent
  add      map a directory (see clod-add --help)
  remove   stop mapping a project, by name or path; files are untouched
  list     the mapped projects (* = active) and the state of clod's VMs

Options:
  --project=<dir>  the project directory [default: .]
  --no-graphics    run the VM without a window (Tart; QEMU VMs never have one)
  --rebuild-dst    rebuild the destination image (your home config) first
  --rebuild-base   rebuild the base image (OS and tools) and then dst first
  --timeout=<s>    seconds a VM gets to stop before it is killed [default: 30]
  --json           machine-readable output
  -q --quiet       only errors on stderr
  -v --verbose     more detail on stderr
  --debug          log every command run, and tracebacks
  -h --help        show this help

Environment: CLOD_BACKEND=tart|qemu, CLOD_CPUS, CLOD_MEMORY (see resource-calc
--help), CLOD_STATE_DIR; CLOD_BOOT_TIMEOUT=<s>: how long a started VM gets to
obtain an address and then to answer on SSH (default 60 and 90 s with Tart);
image settings are Make variables (make help).
Examples:
  clod run                          # Claude Code in the current project
  clod run -- git status            # any command, exit status passed through
  clod run --project ~/src/app -- npm test
"""

import json
import sys

from clod import cli, launch, log, projects
from clod.commands import project_map


def do_run(args):
    rebuild = "base" if args["--rebuild-base"] else "dst" if args["--rebuild-dst"] else None
    argv = args["<cmd>"] or ["claude"]
    return launch.run(argv, args["--project"], graphics=not args["--no-graphics"], rebuild=rebuild)


def do_shell(args):
    return launch.run(["zsh", "-l"], args["--project"], graphics=not args["--no-graphics"])


def do_stop(args):
    stopped = launch.stop_all(int(args["--timeout"]))
    if not stopped:
        log.info("no clod VM is running")


def do_list(args):
    vm_driver = launch.driver()
    names = (vm_driver.dst_name, vm_driver.base_name)
    vms = [{"name": vm["Name"], "state": vm["State"]} for vm in vm_driver.list() if vm["Name"] in names]
    if args["--json"]:
        mapped = sorted(projects.load(), key=lambda p: p.added)
        current = projects.active(mapped)
        rows = [{"name": p.name, "path": p.path, "active": p is current, "exists": p.exists} for p in mapped]
        json.dump({"projects": rows, "vms": vms}, sys.stdout, indent=2, ensure_ascii=False)
        print()
        return
    project_map.do_list(args)
    for vm in vms:
        print(f"vm {vm['name']}: {vm['state']}")


VERBS = {
    "run": do_run,
    "shell": do_shell,
    "stop": do_stop,
    "add": project_map.do_add,
    "remove": project_map.do_remove,
    "list": do_list,
}


def dispatch(args):
    verb = next(v for v in VERBS if args[v])
    return VERBS[verb](args)


def main():
    cli.main(__doc__, dispatch, "clod")
