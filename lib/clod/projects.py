"""The mapped projects: which host directories the VM may see.

One file, state/projects.json, keyed by each directory's canonical physical
path, so a symlink, a trailing slash or `..` can never make a second entry.
Everything here is refused *before* anything is written: a bad path leaves the
map exactly as it was.
"""

import os
import shlex
import time
import unicodedata
from pathlib import Path

from clod import log, paths, store
from clod.errors import ClodError

SCHEMA = 1
NAME_MAX = 64
NAME_MAX_BYTES = 255  # a file name's limit in the guest, in UTF-8 bytes
# Characters that cannot appear in a name: '/' splits paths, ':' and ','
# are separators in Tart's `--dir name:path:opts` and QEMU's option syntax.
NAME_FORBIDDEN = set("/:,\\")
MANY_REPOS = 3
SYMLINK_SCAN_LIMIT = 5000


class Project:
    """One mapped directory. (A plain class: importing dataclasses would cost
    every script start-up ~8 ms.)"""

    __slots__ = ("name", "path", "added", "used")

    def __init__(self, name: str, path: str, added: int, used: int):
        self.name = name
        self.path = path  # canonical physical path: the key
        self.added = added  # time.time_ns() when first added
        self.used = used  # time.time_ns() when last added or run: the newest is the active project

    def as_dict(self) -> dict:
        return {"name": self.name, "path": self.path, "added": self.added, "used": self.used}

    @property
    def exists(self) -> bool:
        return os.path.isdir(self.path)


def _file() -> Path:
    return paths.state_path("projects.json")


def load() -> list[Project]:
    data = store.read_json(_file(), SCHEMA, default={"schema": SCHEMA, "projects": []})
    try:
        return [Project(**entry) for entry in data["projects"]]
    except (KeyError, TypeError) as err:
        raise store.corrupt(_file(), f"an entry is malformed ({err})") from None


def _save(projects: list[Project]):
    store.write_json(_file(), {"schema": SCHEMA, "projects": [p.as_dict() for p in projects]})


def active(projects: list[Project]) -> Project | None:
    return max(projects, key=lambda p: p.used, default=None)


# ---------------------------------------------------------------- paths


def canonical(spelling: str) -> str:
    """The physical absolute path for any spelling (relative, symlinked, `..`).

    realpath also works for a directory that no longer exists: it resolves what
    is left, which is how `remove` finds a project deleted on the host.
    """
    return os.path.realpath(os.path.abspath(os.path.expanduser(spelling)))


def _is_same_or_ancestor(path: str, of: str) -> bool:
    return of == path or of.startswith(path.rstrip("/") + "/")


def _is_inside(path: str, of: str) -> bool:
    return _is_same_or_ancestor(of, path)


def _protected() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(paths that may not be mapped nor any ancestor of them,
        paths whose insides may not be mapped), each with the reason."""
    home = str(paths.home())
    tart_home = canonical(os.environ.get("TART_HOME", os.path.join(home, ".tart")))
    state = str(paths.state_dir())
    no_ancestor = [
        (home, "your home directory"),
        (str(paths.ROOT), "the clod checkout"),
        (state, "clod's state directory (it holds clod's SSH key)"),
        (tart_home, "Tart's VM directory"),
    ]
    no_inside = [
        (str(paths.ROOT), "the clod checkout (the agent could change clod's own scripts)"),
        (state, "clod's state directory (it holds clod's SSH key)"),
        (tart_home, "Tart's VM directory"),
        (canonical(os.path.join(home, ".ssh")), "your SSH keys"),
        (canonical(os.path.join(home, ".gnupg")), "your GnuPG keys"),
    ]
    return no_ancestor, no_inside


def check_mappable(spelling: str) -> str:
    """The canonical path of a directory that may be mapped, or a ClodError."""
    if not spelling:
        raise ClodError("no directory given", hint="clod add DIR")
    if "\n" in spelling or "\r" in spelling:
        raise ClodError(f"refusing a path with a line break in it: {spelling!r}", hint="rename the directory")
    shown = spelling
    path = canonical(spelling)
    if not os.path.exists(path):
        raise ClodError(f"no such directory: {shown}", hint="check the spelling, or create it first (mkdir -p)")
    if not os.path.isdir(path):
        raise ClodError(f"not a directory: {shown}", hint="map the directory that holds it")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise ClodError(f"the path {shown!r} is not valid UTF-8", hint="rename the directory") from None
    if "\n" in path:
        raise ClodError(f"refusing a path with a line break in it: {path!r}", hint="rename the directory")
    if ":" in path:
        # Tart's --dir takes `name:path:options`; a colon in the path cannot be
        # told apart from those separators, so it is refused on every host.
        raise ClodError(
            f"the path {path} contains ':', which VM directory sharing cannot take",
            hint="rename the directory (or a parent) so the path has no ':'",
        )
    if path == "/":
        raise ClodError("refusing to map / : the agent could change every file on this machine", hint="map one project directory")
    no_ancestor, no_inside = _protected()
    for protected, what in no_ancestor:
        if _is_same_or_ancestor(path, protected):
            relation = "is" if path == protected else "contains"
            hint = "map one project directory instead, e.g. clod add ~/src/myapp"
            if protected == str(paths.ROOT):
                hint = f"cd to your project and run: make -C {paths.ROOT} run PROJECT=."
            raise ClodError(f"refusing to map {path}: it {relation} {what}, which must never reach the VM", hint=hint)
    for protected, what in no_inside:
        if _is_inside(path, protected):
            raise ClodError(f"refusing to map {path}: it is inside {what}", hint="map a project directory")
    return path


def _warn_about(path: str, projects: list[Project]):
    """Things worth saying that are not reasons to refuse."""
    try:
        repos = [e.name for e in os.scandir(path) if e.is_dir(follow_symlinks=False) and os.path.exists(os.path.join(e.path, ".git"))]
    except OSError:
        repos = []
    if len(repos) >= MANY_REPOS:
        log.warn(
            f"{path} holds {len(repos)} git repositories ({', '.join(sorted(repos)[:3])}, ...); "
            f"the agent can change all of them. To map just one: clod add {os.path.join(path, sorted(repos)[0])}"
        )
    for other in projects:
        if other.path != path and (_is_inside(path, other.path) or _is_inside(other.path, path)):
            log.warn(f"{path} and project '{other.name}' ({other.path}) overlap: the VM sees the shared part twice")
    escaping = _escaping_symlinks(path)
    if escaping:
        shown = "; ".join(f"{link} -> {target}" for link, target in escaping[:3])
        log.warn(
            f"{len(escaping)} symlink(s) in {path} point outside it and will dangle in the VM "
            f"(their targets are not mapped): {shown}"
        )


def _escaping_symlinks(root: str) -> list[tuple[str, str]]:
    """Symlinks under root whose target is outside it; a bounded walk, since a
    project can be huge and this is only a warning."""
    found, seen = [], 0
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = [d for d in subdirs if d not in (".git", "node_modules")]
        for entry in subdirs + files:
            seen += 1
            full = os.path.join(directory, entry)
            if os.path.islink(full):
                try:
                    target, shown = os.path.realpath(full), os.readlink(full)
                except OSError:  # e.g. a link through /proc/1/cwd: unreadable, so only a warning's loss
                    continue
                if not _is_inside(target, root):
                    found.append((os.path.relpath(full, root), shown))
        if seen > SYMLINK_SCAN_LIMIT:
            break
    return found


# ---------------------------------------------------------------- names


def sanitize(name: str) -> str:
    """A name safe as a guest directory name and inside `--dir name:path`."""
    name = unicodedata.normalize("NFC", name)
    cleaned = "".join("-" if c in NAME_FORBIDDEN or unicodedata.category(c).startswith("C") else c for c in name)
    cleaned = cleaned.strip(" ").lstrip(".-").rstrip(" .")
    cleaned = cleaned[:NAME_MAX]
    while len(cleaned.encode("utf-8", "surrogatepass")) > NAME_MAX_BYTES:
        cleaned = cleaned[:-1]
    return cleaned.rstrip(" .") or "project"


def _taken(name: str, projects: list[Project], path: str) -> bool:
    # Case-insensitive: macOS guests' file systems are, so "App" and "app"
    # would be one directory in ~/projects.
    return any(p.name.casefold() == name.casefold() and p.path != path for p in projects)


def _free_name(base: str, projects: list[Project], path: str) -> str:
    name, n = base, 1
    while _taken(name, projects, path):
        n += 1
        suffix = f"-{n}"
        name = base[: NAME_MAX - len(suffix)] + suffix
    return name


def check_name(name: str) -> str:
    if sanitize(name) != unicodedata.normalize("NFC", name):
        raise ClodError(
            f"invalid project name {name!r}",
            hint=f"a name may hold any characters except '/', ':', ',', '\\' and control characters, may not start "
            f"with '.', '-' or a space nor end with '.' or a space; e.g. {sanitize(name)!r}",
            exit_code=2,
        )
    return sanitize(name)


# ---------------------------------------------------------------- verbs


def add(spelling: str, name: str | None = None) -> tuple[Project, bool]:
    """Map a directory (or make an already mapped one active). Returns the
    project and whether it is new."""
    path = check_mappable(spelling)
    wanted = check_name(name) if name is not None else None
    with store.locked("projects"):
        projects = load()
        existing = next((p for p in projects if p.path == path), None)
        if wanted is not None and _taken(wanted, projects, path):
            owner = next(p for p in projects if p.name.casefold() == wanted.casefold())
            raise ClodError(
                f"the name '{wanted}' is already used by {owner.path}",
                hint=f"pick another name: clod add {shlex.quote(spelling)} OTHER-NAME",
            )
        now = time.time_ns()
        if existing:
            existing.used = now
            if wanted is not None:
                existing.name = wanted
            _save(projects)
            return existing, False
        project = Project(
            name=wanted or _free_name(sanitize(os.path.basename(path)), projects, path),
            path=path,
            added=now,
            used=now,
        )
        _warn_about(path, projects)
        projects.append(project)
        _save(projects)
        return project, True


def find(spec: str, projects: list[Project]) -> Project | None:
    """A project by name, or by any spelling of its path (even a deleted one)."""
    looks_like_path = "/" in spec  # names never contain '/'; "~app" or "." may still be a name or a path
    if not looks_like_path:
        by_name = next((p for p in projects if p.name == spec), None)
        by_name = by_name or next((p for p in projects if p.name.casefold() == spec.casefold()), None)
        if by_name:
            return by_name
    candidates = {canonical(spec), os.path.normpath(os.path.abspath(os.path.expanduser(spec)))}
    return next((p for p in projects if p.path in candidates), None)


def remove(spec: str) -> Project:
    """Forget a project. Never touches the directory itself."""
    with store.locked("projects"):
        projects = load()
        project = find(spec, projects)
        if project is None:
            names = ", ".join(p.name for p in projects) or "none"
            raise ClodError(f"no mapped project matches {spec!r}", hint=f"mapped projects: {names} (see clod list)")
        projects.remove(project)
        _save(projects)
        return project


def for_vm(projects: list[Project]) -> list[Project]:
    """The projects to share with a VM, all present on disk.

    One stale entry would make Tart refuse to start the VM with an error that
    names no path, so clod checks first and fails naming each missing one.
    """
    missing = [p for p in projects if not p.exists]
    if missing:
        listed = ", ".join(f"'{p.name}' ({p.path})" for p in missing)
        removes = "; ".join(f"clod remove {shlex.quote(p.name)}" for p in missing)
        raise ClodError(
            f"mapped project directory missing on this host: {listed}",
            hint=f"restore it, or stop mapping it: {removes}",
        )
    # A mapped directory replaced by a symlink (to ~, say) would share the
    # symlink's target: refuse it, it was never checked.
    for p in projects:
        if canonical(p.path) != p.path:
            raise ClodError(
                f"mapped project '{p.name}' ({p.path}) is now a symlink to {canonical(p.path)}",
                hint=f"stop mapping it (clod remove {shlex.quote(p.name)}), then add the directory you mean",
            )
    return sorted(projects, key=lambda p: p.added)
