"""The Tart driver: the only code that runs `tart`.

Facts about tart's CLI come from shared/tart-cli-contract.md. What matters here:
- `tart run` blocks until the VM stops and has no --detach, so we start it in
  the background with its output in a log file (a pipe could close under it
  and kill it with SIGPIPE), and the VM's state comes from `tart list`, which
  reads the run lock tart holds on config.json.
- `tart stop` is a hard power-off (SIGINT to `tart run`).
- Known failures are recognised in tart's stderr and turned into errors that
  say what to do (`explain`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from pathlib import Path

from clod import log, paths, proc, vmstate
from clod.errors import ClodError
from clod.proc import CommandFailed

TART = "tart"
GIB = 1 << 30
MACOS_VM_LIMIT = 2  # Apple's licence: two macOS guests per host
START_TIMEOUT = 60.0
# Seconds `tart run` must survive after the VM reads as running: VZ reports the
# macOS VM limit just after tart takes the run lock. A later exit is still caught:
# `ip` tells a VM that stopped from one without an address.
STAY_UP = 0.5


class TartDriver:
    name = "tart"
    guest_os = "macos"
    def __init__(self):
        # Cirrus Labs' images log in as admin/admin; other images may differ.
        self.ssh_user = os.environ.get("MACOS_USER", "admin")
        version = os.environ.get("MACOS_VERSION", "tahoe")
        flavor = os.environ.get("MACOS_FLAVOR", "xcode")
        self.base_name = "clodpod-xcode-base"
        self.dst_name = "clodpod-xcode"
        self.source_image = macos_image(version, flavor)

    # ------------------------------------------------------------ plumbing

    def tart(self, *args: str, check: bool = True, timeout: float | None = None):
        try:
            return proc.run([TART, *args], check=check, timeout=timeout)
        except CommandFailed as failure:
            raise explain(failure) from None

    def tart_home(self) -> Path:
        return Path(os.environ.get("TART_HOME") or os.path.expanduser("~/.tart"))

    # ------------------------------------------------------------ facts

    def list(self) -> list[dict]:
        return json.loads(self.tart("list", "--source", "local", "--format", "json").stdout or "[]")

    def get(self, name: str) -> dict:
        return json.loads(self.tart("get", name, "--format", "json").stdout)

    def exists(self, name: str) -> bool:
        return any(vm["Name"] == name for vm in self.list())

    def state(self, name: str) -> str:
        """running | suspended | stopped | missing"""
        return next((vm["State"] for vm in self.list() if vm["Name"] == name), "missing")

    # ------------------------------------------------------------ verbs

    def clone(self, source: str, new: str):
        self.tart("clone", source, new)

    def set(self, name: str, cpus: int | None = None, memory_mib: int | None = None, random_mac: bool = False):
        args = ["set", name]
        if cpus is not None:
            args += ["--cpu", str(cpus)]
        if memory_mib is not None:
            args += ["--memory", str(memory_mib)]
        if random_mac:
            args.append("--random-mac")
        self.tart(*args)

    def rename(self, name: str, new: str):
        self.tart("rename", name, new)

    def delete(self, name: str):
        self.tart("delete", name)

    def replace(self, tmp: str, final: str):
        """Put the finished build `tmp` in place of `final` in one step: tart's
        clone replaces its target atomically (and copy-on-write on APFS), so
        the old image stays usable until this very moment."""
        self.tart("clone", tmp, final)
        self.tart("delete", tmp)

    def prune(self, *args: str):
        self.tart("prune", *args)

    def remove_partial(self, name: str):
        """Remove vms/NAME when tart does not list it: a clone that died part-way
        (disk full) can leave a directory without config.json, which `tart
        delete` calls nonexistent. Only for names clod itself created."""
        if not re.fullmatch(r"[A-Za-z0-9._-]+", name) or name in (".", ".."):
            return
        path = self.tart_home() / "vms" / name
        if path.is_dir() and not (path / "config.json").exists():
            shutil.rmtree(path, ignore_errors=True)
            log.info(f"removed the partial VM {name} ({path})")

    def exec(self, name: str, argv: list[str]) -> int:
        """`tart exec` (needs the Tart Guest Agent in the guest; clod itself
        never does: its guest steps run over SSH). tart's stderr is relayed as
        it comes; a missing agent becomes an error that says what to do."""
        import subprocess
        import sys

        argv = [TART, "exec", name, *argv]
        log.debug("+ " + " ".join(argv))
        try:
            child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
        except FileNotFoundError:
            raise ClodError(f"{TART}: command not found", hint=proc.install_hint(TART)) from None
        no_agent = False
        for line in iter(child.stderr.readline, b""):
            sys.stderr.buffer.write(line)
            sys.stderr.flush()
            no_agent = no_agent or b"Guest Agent" in line
        status = child.wait()
        if status != 0 and no_agent:
            raise ClodError(
                f"tart exec {name}: no Tart Guest Agent answered in the VM",
                hint="the image lacks tart-guest-agent, or its control socket is stale after a restart (stop and start "
                f"the VM); clod needs no agent: run commands over SSH with ssh-run {name} -- CMD",
            )
        return status

    def running_macos_vms(self, excluding: str) -> list[str]:
        running = [vm["Name"] for vm in self.list() if vm["State"] == "running" and vm["Name"] != excluding]
        return [name for name in running if self.get(name).get("OS", "darwin") == "darwin"]

    def run(self, name: str, dirs: list[tuple[str, str]], graphics: bool = False):
        """Start `tart run` in the background; return once the VM runs.

        Fails at once, with tart's own words, when `tart run` exits early.
        """
        others = self.running_macos_vms(excluding=name)
        if len(others) >= MACOS_VM_LIMIT:
            raise ClodError(
                f"macOS allows {MACOS_VM_LIMIT} macOS VMs at a time and these already run: {', '.join(others)}",
                hint="stop one first: clod stop (clod's VMs) or tart stop NAME",
            )
        for _, path in dirs:
            if not os.path.isdir(path):  # VZ would refuse with an error that names no path
                raise ClodError(f"mapped directory missing: {path}", hint=f"clod remove '{path}'")
        argv = [TART, "run", *([] if graphics else ["--no-graphics"])]
        argv += [f"--dir={share}:{path}" for share, path in dirs]
        argv.append(name)
        log_path = paths.state_path("logs", f"tart-run-{name}.log")
        with open(log_path, "ab") as output:
            output.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n".encode())
            output.flush()
            child = proc.spawn(argv, stdout=output)
        vmstate.record(name, pid=child.pid, dirs=dirs, graphics=graphics, log=str(log_path))
        self._wait_started(name, child, log_path)

    def _wait_started(self, name: str, child, log_path: Path):
        deadline = time.monotonic() + START_TIMEOUT
        running_since = None
        while time.monotonic() < deadline:
            if child.poll() is not None:
                vmstate.forget(name)
                raise start_failure(name, child.returncode, log_path)
            if running_since is None:
                if self.state(name) == "running":
                    running_since = time.monotonic()
            # The macOS VM limit only shows after the run lock is taken, so a
            # VM that reads "running" must stay up a moment (only `tart run`
            # can end that: it holds the lock).
            elif time.monotonic() - running_since >= STAY_UP:
                return
            time.sleep(0.1)
        child.send_signal(signal.SIGINT)
        vmstate.forget(name)
        raise ClodError(f"VM {name} did not start within {START_TIMEOUT:.0f}s", hint=f"see {log_path}")

    def ip(self, name: str, wait: int = 60) -> str:
        try:
            address = self.tart("ip", "--wait", str(wait), name).stdout.strip()
        except ClodError as err:
            if "no IP address" in err.message:
                if self.state(name) != "running":  # not a DHCP problem: `tart run` ended
                    raise self._stopped(name) from None
                raise no_ip(name, wait) from None
            raise
        others = [vm["Name"] for vm in self.list() if vm["State"] == "running" and vm["Name"] != name]
        for other in others:
            result = proc.run([TART, "ip", other], check=False)
            if result.returncode == 0 and result.stdout.strip() == address:
                # Base and dst share a host key, so the pin cannot tell them
                # apart: refuse rather than ssh into whichever answers.
                raise ClodError(
                    f"VMs {name} and {other} both report IP {address}, so SSH could reach either one "
                    "(the DHCP lease pool is likely exhausted, tart #1097)",
                    hint=f"stop the other VM (tart stop {other}), then clod run again; to stop it recurring, shorten the "
                    "lease time (see the no-IP error's hint)",
                )
        return address

    def _stopped(self, name: str) -> ClodError:
        """The error for a VM that is not running (anymore), with what its
        `tart run` said if clod started it."""
        record = vmstate.load(name) or {}
        vmstate.forget(name)
        log_path = Path(record["log"]) if record.get("log") else None
        if log_path and log_path.exists():
            return start_failure(name, None, log_path)
        return ClodError(f"VM {name} is not running", hint="clod run starts it; tart list shows what runs")

    def ssh_endpoint(self, name: str, wait: int = 60) -> dict:
        port = int(os.environ.get("CLOD_TART_SSH_PORT", "22"))
        return {"host": self.ip(name, wait), "port": port, "user": self.ssh_user}

    def stop(self, name: str, timeout: int = 30):
        """Flush the guest's disks over SSH, then tart's (hard) stop. Idempotent."""
        if self.state(name) != "running":
            vmstate.forget(name)
            return
        from clod import ssh

        try:
            endpoint = ssh.Endpoint(vm=name, **self.ssh_endpoint(name, wait=2))
            ssh.run_capture(endpoint, "sync", check=False, timeout=timeout)
            ssh.close_master(endpoint)
        except ClodError as err:
            log.verbose(f"could not sync {name} before stopping it: {err.message}")
        result = proc.run([TART, "stop", "--timeout", str(timeout), name], check=False)
        if result.returncode not in (0, 2):  # 2: it stopped by itself meanwhile
            raise explain(CommandFailed([TART, "stop", name], result.returncode, result.stdout, result.stderr))
        vmstate.forget(name)

    def running_dirs(self, name: str) -> list[tuple[str, str]]:
        return [tuple(d) for d in (vmstate.load(name) or {}).get("dirs", [])]

    def running_graphics(self, name: str) -> bool | None:
        return (vmstate.load(name) or {}).get("graphics")

    # ------------------------------------------------------------ images

    def _boot_for_setup(self, name: str):
        """Size and start a VM being built; return its SSH endpoint."""
        from clod import resources, ssh

        _, size = resources.configured(self.guest_os)
        self.set(name, cpus=size.cpus, memory_mib=size.memory_mib)
        self.run(name, dirs=[], graphics=False)
        return ssh.Endpoint(vm=name, **self.ssh_endpoint(name, wait=120))

    def build_base(self, tmp: str):
        """Pull the Cirrus Labs image into `tmp` and install clod's tool set."""
        from clod import guest, ssh

        check_space(self, self.source_image)
        with log.step(f"cloning {self.source_image} (a first pull downloads tens of GB)"):
            self.clone(self.source_image, tmp)
        endpoint = self._boot_for_setup(tmp)
        guest.bootstrap_key(endpoint, os.environ.get("MACOS_PASSWORD", "admin"))
        guest.upload_setup(endpoint, "macos")
        env = {
            "CLOD_AUTHORIZED_KEY": ssh.public_key(),
            "ALLOW_SUDO": os.environ.get("ALLOW_SUDO", "0"),
            "CLOD_HOSTNAME": self.dst_name,
            "CLAUDE_CODE_VERSION": os.environ.get("CLAUDE_CODE_VERSION", ""),
        }
        guest.run_step(endpoint, "macos/install.sh", env, "base install")
        self.stop(tmp)

    def build_dst(self, base: str, tmp: str, home: Path, identity: dict[str, str]):
        """Clone the base into `tmp` and configure the user's home in it."""
        from clod import guest, ssh

        check_space(self, base)
        self.clone(base, tmp)
        ssh.copy_pin(base, tmp)  # a clone has its source's host key
        endpoint = self._boot_for_setup(tmp)
        ssh.wait_for_sshd(endpoint)
        guest.upload_setup(endpoint, "macos")
        guest.upload(endpoint, {".": home}, guest.HOME_STAGING)
        guest.run_step(endpoint, "macos/configure.sh", {**identity, "ALLOW_SUDO": os.environ.get("ALLOW_SUDO", "0")}, "configure")
        self.stop(tmp)

    # ------------------------------------------------------------ disk space

    def free_bytes(self) -> int:
        """Free bytes where tart keeps VMs, as `df` reports them (POSIX -P
        output: the 4th field of the last line is available 1K blocks)."""
        probe = self.tart_home()
        while not probe.exists():
            probe = probe.parent
        fields = proc.run(["df", "-Pk", str(probe)]).stdout.splitlines()[-1].split()
        return int(fields[3]) * 1024

    def image_cached(self, image: str) -> bool:
        listed = json.loads(self.tart("list", "--source", "oci", "--format", "json").stdout or "[]")
        return any(vm["Name"] == image for vm in listed)


# ---------------------------------------------------------------- images

MACOS_FLAVORS = ("vanilla", "base", "xcode")
# Rough sizes of Cirrus Labs' images, used when the registry cannot be asked.
FLAVOR_GIB = {"vanilla": 30, "base": 40, "xcode": 90}


def macos_image(version: str, flavor: str) -> str:
    if not re.fullmatch(r"[a-z]+", version or ""):
        raise ClodError(f"MACOS_VERSION={version!r} is not a macOS release name", hint="e.g. MACOS_VERSION=tahoe (or sequoia, sonoma)")
    if flavor not in MACOS_FLAVORS:
        raise ClodError(f"MACOS_FLAVOR={flavor!r} is not one of {', '.join(MACOS_FLAVORS)}", hint="e.g. MACOS_FLAVOR=xcode")
    return f"ghcr.io/cirruslabs/macos-{version}-{flavor}:latest"


def image_size_bytes(image: str) -> int | None:
    """The compressed size of a registry image from its OCI manifest (anonymous
    token, as for any public ghcr.io image), or None if the registry cannot be
    asked. Only a few kB are fetched, never the image."""
    import requests

    match = re.fullmatch(r"([^/]+)/(.+):([^:/]+)", image)
    if not match:
        return None
    host, repository, tag = match.groups()
    try:
        token = requests.get(f"https://{host}/token", params={"scope": f"repository:{repository}:pull"}, timeout=5).json()["token"]
        headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "application/vnd.oci.image.manifest.v1+json",
        }
        manifest = requests.get(f"https://{host}/v2/{repository}/manifests/{tag}", headers=headers, timeout=5).json()
        return sum(layer.get("size", 0) for layer in manifest.get("layers", [])) or None
    except (requests.RequestException, ValueError, KeyError):
        return None


CLONE_ROOM = 5 * GIB  # a copy-on-write clone's own writes during a build


def check_space(driver: TartDriver, image: str):
    """Refuse a pull or clone that cannot fit, before anything is downloaded.

    A pulled image is stored unpacked (about twice its compressed size); the
    clone is copy-on-write on APFS, so it needs little beyond that. A local
    VM (the base, for a dst build) only needs that room.
    """
    if "/" not in image:
        needed, source = CLONE_ROOM, "a local clone"
    elif driver.image_cached(image):
        needed, source = CLONE_ROOM, "cached"
    else:
        compressed = image_size_bytes(image)
        flavor = image.rsplit("-", 1)[-1].split(":")[0]
        needed = 2 * compressed + CLONE_ROOM if compressed else FLAVOR_GIB.get(flavor, 90) * GIB
        source = "from the registry" if compressed else "an estimate: the registry could not be asked"
    free = driver.free_bytes()
    if free < needed:
        raise ClodError(
            f"not enough disk space for {image}: it needs about {needed / GIB:.0f} GiB ({source}), "
            f"and {driver.tart_home()} has {free / GIB:.1f} GiB free",
            hint="free some space (tart prune --older-than 30 removes old cached images, tart list shows VMs), then retry",
        )
    log.verbose(f"disk space: {needed / GIB:.0f} GiB needed ({source}), {free / GIB:.1f} GiB free")


# ---------------------------------------------------------------- errors


def explain(failure: CommandFailed) -> ClodError:
    """tart's failure, with what to do about it."""
    text = failure.stderr + failure.stdout
    verb = failure.argv[1] if len(failure.argv) > 1 else ""
    said = proc.tail(text, 4) or f"exit {failure.returncode}"
    if "No space left on device" in text:
        return ClodError(
            f"tart {verb} ran out of disk space: {said}",
            hint="free space on the disk holding ~/.tart (tart prune --older-than 30 removes old cached images), then retry",
        )
    if "403" in text or "DENIED" in text or "AuthFailed" in text:
        return ClodError(
            f"the registry refused access (403) during tart {verb}: {said}",
            hint="public Cirrus images need no login; a 403 usually means stale saved credentials: tart logout ghcr.io",
        )
    if "429" in text or "Too Many Requests" in text:
        return ClodError(
            f"the registry is rate-limiting downloads (429) during tart {verb}: {said}",
            hint="wait a while and retry, or log in to raise the limit: tart login ghcr.io",
        )
    if "exceeds the system limit" in text:
        return vm_limit(said)
    if "at minimum" in text:
        return ClodError(f"tart {verb}: {said}", hint="the image needs more: raise CLOD_CPUS / CLOD_MEMORY to its minimum")
    if "does not exist" in text:
        return ClodError(f"tart {verb}: {said}", hint="clod run builds clod's VMs; tart list shows what exists")
    if "is already running" in text:
        return ClodError(f"tart {verb}: {said}", hint="clod stop, then retry")
    return ClodError(f'"tart {verb}" exited {failure.returncode}: {said}')


def vm_limit(said: str) -> ClodError:
    return ClodError(
        f"macOS refused to start another VM: {said}",
        hint="macOS runs at most 2 macOS VMs at once: stop one (clod stop / tart stop NAME). If none run, the slot "
        "leaked - a known macOS problem that only a host reboot clears",
    )


def start_failure(name: str, status: int | None, log_path: Path) -> ClodError:
    """`tart run` ended: at once (status known) or later, while clod waited for the VM (None)."""
    said = proc.tail(log_path.read_text(errors="replace").split("\n--- ")[-1], 8)
    said = "\n".join(said.splitlines()[1:]) if said.startswith(("--- ", "20")) else said
    if "exceeds the system limit" in said:
        return vm_limit(said)
    hint = f"full log: {log_path}"
    if "failed to start" in said:
        hint = ("on a headless Mac, tart needs a logged-in GUI session (enable automatic login, or log in once "
                "through Screen Sharing); " + hint)  # fmt: skip
    if "directory sharing" in said:
        hint = "a mapped directory is missing or unreadable: check clod list; " + hint
    ended = f"exited {status} at once" if status is not None else "stopped while clod waited for the VM"
    return ClodError(f"tart run {name} {ended}: {said or '(no output)'}", hint=hint)


def no_ip(name: str, wait: int) -> ClodError:
    return ClodError(
        f"VM {name} is running but got no IP address within {wait}s. The usual cause is an exhausted DHCP lease "
        "pool: macOS hands VMs 1-day leases from about 253 addresses, so many VM starts in a day use them up",
        hint="shorten the lease time (needs sudo): sudo defaults write /Library/Preferences/SystemConfiguration/"
        "com.apple.InternetSharing.default.plist bootpd -dict DHCPLeaseTimeSecs -int 600 ; or remove stale entries "
        "from /var/db/dhcpd_leases. Then: clod stop && clod run",
    )
