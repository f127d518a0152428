"""The short front-ends: clod-add, clod-remove and clod-list.

Each is project-map with one verb fixed; the work is in project_map.
"""

from clod import cli
from clod.commands import project_map

COMMON = """
Options:
  -q --quiet     only errors on stderr
  -v --verbose   more detail on stderr
  --debug        log every command run, and tracebacks
  -h --help      show this help
"""

ADD = """clod-add: map a project directory into the clod VM and make it active.

Usage:
  clod-add [options] [--] <dir> [<name>]

DIR may be relative, symlinked or end in '/': the key is its physical path, so
one directory is one project. NAME defaults to the directory's base name (made
unique: a second 'app' becomes 'app-2'); the guest sees it at ~/projects/NAME.
Refused, with nothing recorded: /, your home and its ancestors, the clod
checkout and its state dir, ~/.tart, ~/.ssh, paths with ':' or a line break.
Prints the project's name.
""" + COMMON

REMOVE = """clod-remove: stop mapping a project. Its files are never touched.

Usage:
  clod-remove [options] [--] <dir-or-name>

Accepts the project's name or any spelling of its path, also after the
directory was deleted or renamed on the host. Prints the removed name.
""" + COMMON

LIST = """clod-list: the mapped projects; * marks the active one.

Usage:
  clod-list [options] [--json]

Options:
  --json         a JSON array of {name, path, active, exists}
""" + COMMON.removeprefix("\nOptions:\n")


def add_main():
    cli.main(ADD, project_map.do_add, "clod-add")


def remove_main():
    cli.main(REMOVE, project_map.do_remove, "clod-remove")


def list_main():
    cli.main(LIST, project_map.do_list, "clod-list")
