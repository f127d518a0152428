"""`clod run`: from a project directory to a command running in the VM.

1. The project is resolved (its git top-level when inside a repository) and
   mapped before anything slow, so a bad path fails at once.
2. Under the host-wide launch lock: `make dst` (Make decides what to build),
   then the VM is reused if it runs with the same shares, or started.
   Two `clod run` at once therefore make one build and one start.
3. Outside the lock: SSH in and run the command; its exit status is ours.
"""

import os
import subprocess

from clod import backend, log, paths, proc, projects, resources, ssh, store
from clod.errors import ClodError

LAUNCH_WAIT = 3 * 3600.0  # a base build can take an hour; waiters say whom they wait for
IP_WAIT, SSHD_WAIT = 60, 90  # seconds a started VM gets for an address, then for sshd


def boot_timeout(default: int) -> int:
    """CLOD_BOOT_TIMEOUT, if set: the seconds a started VM gets to obtain an
    address and (again) to answer on SSH, instead of clod's defaults. Raise it
    on a slow host; lower it to fail sooner in scripts."""
    value = os.environ.get("CLOD_BOOT_TIMEOUT")
    if not value:
        return default
    try:
        seconds = int(float(value))
    except ValueError:
        seconds = -1
    if not 1 <= seconds <= 65535:
        raise ClodError(f"CLOD_BOOT_TIMEOUT={value!r} is not a number of seconds (1-65535)", hint="unset it, or set e.g. CLOD_BOOT_TIMEOUT=120")
    return seconds


def driver():
    if backend.name() == "tart":
        from clod.tart import TartDriver

        return TartDriver()
    from clod.qemu import QemuDriver

    return QemuDriver()


# ---------------------------------------------------------------- the project


def git_toplevel(path: str) -> str | None:
    try:
        result = subprocess.run(["git", "-C", path, "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                                stdin=subprocess.DEVNULL)  # fmt: skip
    except FileNotFoundError:
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def resolve_project(spec: str | None) -> tuple[projects.Project, str]:
    """Map the project for `spec` (default: the current directory) and return
    it with the subdirectory the session should start in."""
    target = projects.canonical(spec or ".")
    top = git_toplevel(target) if os.path.isdir(target) else None
    root = target
    if top and os.path.realpath(top) != target:
        try:
            projects.check_mappable(top)
            root = os.path.realpath(top)
        except ClodError:
            pass  # e.g. a dotfiles repository in $HOME: map just the directory asked for
    project, created = projects.add(root)
    if created:
        log.info(f"mapped {project.path} as '{project.name}'")
    subdir = os.path.relpath(target, project.path) if target != project.path else ""
    return project, subdir


# ---------------------------------------------------------------- the VM


def make(*targets: str):
    """Run Make for image targets; it prints only what it builds."""
    argv = ["make", "-s", "--no-print-directory", "-C", str(paths.ROOT), *targets]
    env = dict(os.environ, CLOD_BACKEND=backend.name())
    status = proc.run_foreground(argv, env=env)
    if status != 0:
        raise ClodError(f"building the VM image failed (make {' '.join(targets)} exited {status})",
                        hint="the messages above name the step; any earlier image is still there")  # fmt: skip



def ensure_running(vm_driver, active: projects.Project, graphics: bool) -> list[tuple[str, str]]:
    """Start the destination VM with every mapped project, or reuse it.
    Returns the shares of the VM that runs. Call under the launch lock."""
    name = vm_driver.dst_name
    wanted = [(p.name, p.path) for p in projects.for_vm(projects.load())]
    if vm_driver.state(name) == "running":
        if os.environ.get("CLOD_CPUS") or os.environ.get("CLOD_MEMORY"):
            running = vm_driver.get(name)
            log.warn(f"{name} is already running with {running['CPU']} CPUs and {running['Memory']} MiB; "
                     "CLOD_CPUS / CLOD_MEMORY apply when it starts: clod stop, then clod run")  # fmt: skip
        current = [tuple(d) for d in vm_driver.running_dirs(name)]
        running_graphics = vm_driver.running_graphics(name)
        if running_graphics is not None and running_graphics != graphics:
            mode = "with a window" if running_graphics else "without graphics (--no-graphics)"
            raise ClodError(
                f"VM {name} is already running {mode}; the display mode cannot change while it runs",
                hint="clod stop, then clod run again with the mode you want",
            )
        new = [share for share in wanted if share not in current]
        if not new:
            return current
        names = ", ".join(f"'{n}'" for n, _ in new)
        if log.ask(f"VM {name} is running without {names}; restart it to map them? Sessions in it will end."):
            vm_driver.stop(name)
        else:
            log.warn(f"not restarting {name}, so it does not show {names} until you run: clod stop && clod run")
            if (active.name, active.path) not in current:
                raise ClodError(
                    f"project '{active.name}' is not mapped in the running VM {name}",
                    hint="clod stop, then clod run (a restart maps every project)",
                )
            return current
    _, size = resources.configured(vm_driver.guest_os)
    vm_driver.set(name, cpus=size.cpus, memory_mib=size.memory_mib)
    with log.step(f"starting {name} ({size.cpus} CPUs, {size.memory_mib} MiB, {len(wanted)} project(s))"):
        vm_driver.run(name, wanted, graphics=graphics)
    return wanted


def prepare(vm_driver, active: projects.Project, graphics: bool, rebuild: str | None) -> list[tuple[str, str]]:
    with store.locked("launch", timeout=LAUNCH_WAIT, purpose="build or start the VM"):
        if rebuild:
            make(f"rebuild-{rebuild}")
        make("dst")
        return ensure_running(vm_driver, active, graphics)


def run(argv: list[str], project_spec: str | None, graphics: bool = False, rebuild: str | None = None) -> int:
    """Everything `clod run` and `clod shell` do; returns the remote exit status."""
    project, subdir = resolve_project(project_spec)
    vm_driver = driver()
    resources.configured(vm_driver.guest_os)  # a bad CLOD_CPUS / CLOD_MEMORY fails now, not after a build of minutes
    shares = prepare(vm_driver, project, graphics, rebuild)
    endpoint = ssh.Endpoint(vm=vm_driver.dst_name, **vm_driver.ssh_endpoint(vm_driver.dst_name, wait=boot_timeout(IP_WAIT)))
    ssh.wait_for_sshd(endpoint, timeout=boot_timeout(SSHD_WAIT))
    remote = ssh.remote_command(argv, vm_driver.guest_os, project.name, subdir, [name for name, _ in shares])
    return ssh.session(endpoint, remote)


def stop_all(timeout: int = 30) -> list[str]:
    """Stop every clod VM that runs (the destination and any build VM)."""
    vm_driver = driver()
    stopped = []
    for vm in vm_driver.list():
        ours = vm["Name"] in (vm_driver.dst_name, vm_driver.base_name) or vm["Name"].startswith(vm_driver.dst_name + "-build-") \
            or vm["Name"].startswith(vm_driver.base_name + "-build-")  # fmt: skip
        if ours and vm["State"] == "running":
            with log.step(f"stopping {vm['Name']}"):
                vm_driver.stop(vm["Name"], timeout=timeout)
            stopped.append(vm["Name"])
    return stopped
