"""project-map: the host directories the VM may see.

Usage:
  project-map add [options] [--] <dir> [<name>]
  project-map remove [options] [--] <dir-or-name>
  project-map list [options] [--json]
  project-map dirs [options] [-0]
  project-map active [options]
  project-map (-h | --help)

Verbs:
  add      map DIR (any spelling: relative, symlinked, trailing slash) under
           NAME (default: its base name, made unique), and make it active
  remove   stop mapping a project, by name or by any spelling of its path;
           works after the directory was deleted; never deletes files
  list     the mapped projects; * marks the active one (--json for programs)
  dirs     the --dir arguments for a VM run, one per line (-0: NUL-separated);
           fails naming any mapped directory that no longer exists
  active   the path of the active project (the last added or used)

Options:
  --json         machine-readable output
  -0 --null      separate lines with NUL instead of newline
  -q --quiet     only errors on stderr
  -v --verbose   more detail on stderr
  --debug        log every command run, and tracebacks
  -h --help      show this help

Refused (nothing recorded): /, your home and its ancestors, the clod checkout,
its state dir, ~/.tart, ~/.ssh, paths with ':' or a line break, non-directories.
Environment: CLOD_STATE_DIR (default: state/ in the checkout).
"""

import json
import shlex
import sys

from clod import cli, log, projects
from clod.errors import ClodError


def do_add(args):
    before = next((p.name for p in projects.load() if p.path == projects.canonical(args["<dir>"])), None)
    project, created = projects.add(args["<dir>"], args["<name>"])
    if created:
        log.info(f"mapped {project.path} as '{project.name}'")
    elif before is not None and before != project.name:
        log.info(f"renamed '{before}' ({project.path}) to '{project.name}'; it is the active project again")
    else:
        log.info(f"'{project.name}' ({project.path}) was already mapped; it is the active project again")
    print(project.name)


def do_remove(args):
    project = projects.remove(args["<dir-or-name>"])
    log.info(f"stopped mapping '{project.name}' ({project.path}); its files are untouched")
    print(project.name)


def do_list(args):
    mapped = sorted(projects.load(), key=lambda p: p.added)
    current = projects.active(mapped)
    if args["--json"]:
        rows = [
            {"name": p.name, "path": p.path, "active": p is current, "exists": p.exists}
            for p in mapped
        ]
        json.dump(rows, sys.stdout, indent=2, ensure_ascii=False)
        print()
        return
    if not mapped:
        log.info("no projects mapped yet; add one with: clod add DIR")
        return
    width = max(len(p.name) for p in mapped)
    for p in mapped:
        mark = "*" if p is current else " "
        missing = "" if p.exists else f"   (missing on this host: clod remove {shlex.quote(p.name)})"
        print(f"{mark} {p.name:<{width}}  {p.path}{missing}")


def do_dirs(args):
    end = "\0" if args["--null"] else "\n"
    for p in projects.for_vm(projects.load()):
        sys.stdout.write(f"--dir={p.name}:{p.path}{end}")


def do_active(args):
    current = projects.active(projects.load())
    if current is None:
        raise ClodError("no project is mapped yet", hint="clod add DIR")
    print(current.path)


VERBS = {"add": do_add, "remove": do_remove, "list": do_list, "dirs": do_dirs, "active": do_active}


def dispatch(args):
    verb = next(v for v in VERBS if args[v])
    return VERBS[verb](args)


def main():
    # docopt-ng reads a bare "-0" as the number zero, not as an option, so it
    # is spelled --null for the parser (only before a "--").
    argv = sys.argv[1:]
    end = argv.index("--") if "--" in argv else len(argv)
    argv = ["--null" if arg == "-0" else arg for arg in argv[:end]] + argv[end:]
    cli.main(__doc__, dispatch, "project-map", argv)
