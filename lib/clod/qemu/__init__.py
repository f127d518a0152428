"""The QEMU driver: Debian guests on Linux hosts, with tart-wrap's verbs.

VMs live in state/qemu/vms/<NAME>/ (see vm.py); a running VM is owned by its
supervisor process (supervise.py). Building: image.py; the QEMU command
line: argv.py; KVM or TCG: kvm.py; passt: net.py; virtiofsd: virtiofs.py.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

from clod import log, paths, proc
from clod.errors import ClodError
from clod.qemu import image, kvm, vm

DEFAULT_CPUS = 2
DEFAULT_MEMORY_MIB = 2048
BOOT_TIMEOUT = float(os.environ.get("CLOD_BOOT_TIMEOUT", "240"))
SERIAL_TAIL_LINES = 25


class QemuDriver:
    name = "qemu"
    guest_os = "linux"
    base_name = "clodpod-debian-base"
    dst_name = "clodpod-debian"
    ssh_user = "clod"

    # ------------------------------------------------------------ facts

    def list(self) -> list[dict]:
        return [self._summary(name) for name in vm.names()]

    def _summary(self, name: str) -> dict:
        path = vm.vm_dir(name)
        running = vm.is_running(path)
        return {
            "Name": name,
            "State": "running" if running else "stopped",
            "Running": running,
            "Source": "local",
            "Disk": self._disk_gib(path),
            "Size": round(image.allocated_bytes(path) / (1 << 30)),
        }

    def _disk_gib(self, path: Path) -> int:
        try:
            return image.qcow2_virtual_size(path / "disk.qcow2") >> 30
        except (OSError, ClodError):
            return 0

    def get(self, name: str) -> dict:
        path = vm.existing_dir(name)
        config = vm.read_config(path)
        summary = self._summary(name)
        return {
            "OS": "linux",
            "CPU": config.get("cpus", DEFAULT_CPUS),
            "Memory": config.get("memory_mib", DEFAULT_MEMORY_MIB),
            "Disk": summary["Disk"],
            "Size": summary["Size"],
            "State": summary["State"],
            "Running": summary["Running"],
        }

    def exists(self, name: str) -> bool:
        return (vm.vm_dir(name) / "config.json").is_file()

    def state(self, name: str) -> str:
        if not self.exists(name):
            return "missing"
        return "running" if vm.is_running(vm.vm_dir(name)) else "stopped"

    # ------------------------------------------------------------ builds

    def build_base(self, name: str):
        """Build into a temporary directory next to the VMs, rename it into
        place at the end; a failure removes only that directory. The build's
        output is kept in state/logs/ either way."""
        build_log = paths.state_path("logs", f"{name}-build.log")
        with vm.new_vm_dir(name) as tmp, open(build_log, "w") as output:
            with log.step(f"building {name} with mmdebstrap (log: {build_log})"):
                image.build_base(tmp, output)
            vm.write_config(tmp, name=name, kind="base", cpus=DEFAULT_CPUS, memory_mib=DEFAULT_MEMORY_MIB, created=time.time())

    def build_dst(self, base: str, name: str, seed_dir: Path | None = None, identity: dict | None = None):
        """dst = a qcow2 overlay on `base` plus a seed carrying the home tree
        (seed_dir) and a new host key. Nothing boots."""
        from clod import ssh

        base_dir = vm.existing_dir(base)
        try:
            with vm.new_vm_dir(name) as tmp:
                image.make_overlay(base_dir, tmp)
                home = _seed_home(Path(seed_dir), identity or {}, tmp) if seed_dir else None
                self._write_seed(tmp, name, home)
                config = vm.read_config(base_dir)
                vm.write_config(tmp, name=name, kind="dst", base=base, cpus=config.get("cpus", DEFAULT_CPUS),
                                memory_mib=config.get("memory_mib", DEFAULT_MEMORY_MIB), created=time.time())  # fmt: skip
                shutil.rmtree(tmp / "staging-home", ignore_errors=True)
        except BaseException:
            ssh.unpin(name)
            raise

    def _write_seed(self, path: Path, name: str, home: Path | None):
        from clod import ssh

        host_key = ssh.new_host_key(name)
        with tempfile.TemporaryDirectory(prefix="clod-seed-") as staging:
            image.write_seed(path / "seed.img", Path(staging), host_key, ssh.public_key(), home)
        ssh.pin(name, Path(f"{host_key}.pub").read_text())

    # ------------------------------------------------------------ copies

    def clone(self, src: str, dst: str):
        from clod import ssh

        src_dir = vm.existing_dir(src)
        with vm.new_vm_dir(dst) as tmp:
            image.copy_vm_files(src_dir, tmp)
            vm.write_config(tmp, name=dst)
        try:
            ssh.copy_pin(src, dst)  # a clone has its source's host key
        except ClodError:
            pass

    def rename(self, name: str, new: str):
        path = vm.existing_dir(name)
        if vm.is_running(path):
            raise ClodError(f'"{name}" is running', hint=f"stop it first: qemu-wrap stop {name}")
        if vm.vm_dir(new).exists():
            raise ClodError(f'a VM named "{new}" already exists', hint=f"delete it first: qemu-wrap delete {new}")
        os.rename(path, vm.vm_dir(new))
        vm.write_config(vm.vm_dir(new), name=new)

    def replace(self, tmp: str, final: str):
        """Put the finished build `tmp` in place of `final`: the old one is
        moved aside first and deleted only once the new one is in place."""
        new = vm.existing_dir(tmp)
        old = vm.vm_dir(final)
        aside = None
        if old.exists():
            aside = Path(tempfile.mkdtemp(prefix=f".{final}.old.", dir=vm.vms_dir()))
            os.rename(old, aside / "vm")
        os.rename(new, old)
        vm.write_config(old, name=final)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)

    def delete(self, name: str):
        path = vm.existing_dir(name)
        if vm.is_running(path):
            self.stop(name)
        shutil.rmtree(path)

    def set(self, name: str, cpus: int | None = None, memory_mib: int | None = None, random_mac: bool = False):
        path = vm.existing_dir(name)
        changes = {}
        if cpus is not None:
            changes["cpus"] = cpus
        if memory_mib is not None:
            changes["memory_mib"] = memory_mib
        vm.write_config(path, **changes)

    def prune(self, *args: str):
        """Remove leftovers of interrupted builds (hidden temp directories)."""
        for leftover in vm.vms_dir().glob(".*"):
            shutil.rmtree(leftover, ignore_errors=True)

    # ------------------------------------------------------------ running

    def run(self, name: str, dirs: list[tuple[str, str]], graphics: bool = False, plain_boot: bool = False):
        path = vm.existing_dir(name)
        if vm.is_running(path):
            raise ClodError(f'"{name}" is already running', hint=f"stop it first: qemu-wrap stop {name}", exit_code=2)
        for project, host_path in dirs:
            if not Path(host_path).is_dir():
                raise ClodError(f"{host_path} (project {project}) is not a directory", hint="check the path given with --dir")
        if not (path / "seed.img").exists():
            self._write_seed(path, name, None)
        config = vm.read_config(path)
        launch = {
            "name": name,
            "dirs": [[project, str(Path(host_path).resolve())] for project, host_path in dirs],
            "cpus": config.get("cpus", DEFAULT_CPUS),
            "memory_mib": config.get("memory_mib", DEFAULT_MEMORY_MIB),
            "accel": kvm.accel(path / "vmlinuz"),
            # The Debian guest has no desktop: a window would only show its
            # serial console, so QEMU VMs always run headless.
            "graphics": False,
            "plain_boot": plain_boot,
        }
        (path / "launch.json").write_text(json.dumps(launch, indent=2, ensure_ascii=False) + "\n")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(paths.ROOT / "lib"), env.get("PYTHONPATH")]))
        (path / "helpers.log").write_text("")  # appended to by the supervisor and its helpers alike
        with open(path / "helpers.log", "a") as helpers_log:
            supervisor = proc.spawn([sys.executable, "-m", "clod.qemu.supervise", str(path)], stdout=helpers_log, env=env)
        self._wait_ready(name, path, supervisor, plain_boot)

    def _wait_ready(self, name: str, path: Path, supervisor, plain_boot: bool):
        deadline = time.monotonic() + BOOT_TIMEOUT
        facts = None
        while time.monotonic() < deadline:
            if supervisor.poll() is not None:
                raise boot_failure(name, path, f"the VM stopped during boot (supervisor exited {supervisor.returncode})")
            facts = vm.run_facts(path)
            if facts and (facts.get("ready") or plain_boot) and ssh_banner(facts["port"]):
                return
            time.sleep(0.1)
        raise boot_failure(name, path, f"the VM did not answer on SSH within {BOOT_TIMEOUT:g}s")

    def ssh_endpoint(self, name: str, wait: int = 60) -> dict:
        path = vm.existing_dir(name)
        facts = vm.run_facts(path)
        if not facts:
            raise ClodError(f'"{name}" is not running', hint=f"start it: qemu-wrap run {name}", exit_code=2)
        return {"host": "127.0.0.1", "port": facts["port"], "user": self.ssh_user}

    def stop(self, name: str, timeout: int = 30):
        path = vm.existing_dir(name)
        if not vm.is_running(path):
            return
        from clod import ssh

        facts = vm.run_facts(path)
        if facts:
            ssh.close_master(ssh.Endpoint(vm=name, host="127.0.0.1", port=facts["port"], user=self.ssh_user))
        self._set_stop_timeout(path, timeout)
        if not vm.request_stop(path):
            raise ClodError(f'"{name}" runs but its supervisor could not be found', hint=f"see {path}/run.json")
        if not vm.wait_stopped(path, timeout + 10):
            raise ClodError(f'"{name}" did not stop within {timeout + 10}s', hint=f"see {path}/helpers.log")

    def _set_stop_timeout(self, path: Path, timeout: int):
        launch_path = path / "launch.json"
        try:
            launch = json.loads(launch_path.read_text())
        except (OSError, ValueError):
            return
        if launch.get("stop_timeout") != timeout:
            launch["stop_timeout"] = timeout  # read by the supervisor when it handles SIGTERM
            launch_path.write_text(json.dumps(launch, indent=2, ensure_ascii=False) + "\n")

    def running_dirs(self, name: str) -> list[tuple[str, str]]:
        facts = vm.run_facts(vm.existing_dir(name)) or {}
        return [(project, host_path) for project, host_path in facts.get("dirs", [])]

    def running_graphics(self, name: str) -> bool | None:
        return None  # always headless (see run): there is no display mode to mismatch

    def exec(self, name: str, argv: list[str]) -> int:
        from clod import ssh

        endpoint = ssh.Endpoint(vm=name, **self.ssh_endpoint(name))
        return ssh.session(endpoint, ssh.remote_command(argv, "linux"), tty=False)


def ssh_banner(port: int, timeout: float = 2.0) -> bool:
    """True once sshd in the guest answers with its banner (passt accepts the
    TCP connection even before the guest listens)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
            return conn.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def serial_tail(path: Path, lines: int = SERIAL_TAIL_LINES) -> str:
    try:
        text = (path / "serial.log").read_text(errors="replace")
    except OSError:
        return "(no serial log)"
    return "\n".join(text.splitlines()[-lines:]) or "(the serial log is empty)"


def boot_failure(name: str, path: Path, what: str) -> ClodError:
    vm.request_stop(path)
    helpers = ""
    try:
        helpers = "\n".join((path / "helpers.log").read_text(errors="replace").splitlines()[-8:])
    except OSError:
        pass
    details = f"\n--- serial console (last lines) ---\n{serial_tail(path)}"
    if helpers:
        details += f"\n--- helpers.log ---\n{helpers}"
    return ClodError(f'"{name}": {what}{details}', hint=f"full logs in {path}")


def _seed_home(home: Path, identity: dict, scratch: Path) -> Path:
    """What the seed puts in the guest user's home: the merged home tree staged
    where guest-setup/common/configure-home.sh expects it, that script and its
    environment. The guest's clod-seed runs it once per seed, as the guest
    user, exactly as the macOS dst build does over SSH."""
    staged = scratch / "staging-home"
    shutil.copytree(home, staged / ".cache" / "clod-home-staging", symlinks=True)
    setup = staged / ".cache" / "clod-setup"
    shutil.copytree(paths.ROOT / "guest-setup" / "common", setup / "common")
    env = {"CLOD_GIT_NAME": identity.get("CLOD_GIT_NAME", ""), "CLOD_GIT_EMAIL": identity.get("CLOD_GIT_EMAIL", "")}
    (setup / "configure.env").write_text("".join(f"{key}={shlex.quote(value)}\n" for key, value in env.items()))
    return staged
