"""Does `-accel kvm` really work here? Nested virtualisation can expose a
/dev/kvm that hangs or fails ("KVM internal error ... emulation failure", or
no kernel output at all). The probe boots the guest kernel with no root disk
and panic=-1 under -no-reboot: with working KVM the kernel prints its banner,
panics for want of a root file system and QEMU exits within a second or two.
Anything else within PROBE_TIMEOUT means TCG. The verdict is kept per host
(name + kernel release) in state/qemu/kvm.json; CLOD_ACCEL=kvm|tcg overrides.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from clod import log, paths, store
from clod.errors import ClodError

SCHEMA = 1
PROBE_TIMEOUT = 10.0
BROKEN_SIGNS = ("KVM internal error", "emulation failure", "failed to initialize kvm", "Could not access KVM")


def host_key() -> str:
    uname = os.uname()
    return f"{uname.nodename} {uname.release}"


def cache_path() -> Path:
    return paths.state_path("qemu", "kvm.json")


def probe_argv(kernel: Path) -> list[str]:
    cmd = ["qemu-system-x86_64"]
    cmd += ["-accel", "kvm"]
    cmd += ["-cpu", "host"]
    cmd += ["-m", "256"]
    cmd += ["-nodefaults"]
    cmd += ["-no-user-config"]
    cmd += ["-no-reboot"]
    cmd += ["-display", "none"]
    cmd += ["-serial", "stdio"]
    cmd += ["-kernel", str(kernel)]
    cmd += ["-append", "console=ttyS0 panic=-1"]
    return cmd


def judge(returncode: int | None, output: str) -> tuple[bool, str]:
    """(works, reason) from the probe's exit status (None: killed at the
    timeout) and its combined output."""
    for sign in BROKEN_SIGNS:
        if sign.lower() in output.lower():
            return False, f"QEMU said {sign!r}"
    if returncode is None:
        if "Linux version" in output:
            return False, f"the kernel started but did not finish within {PROBE_TIMEOUT:g}s"
        return False, f"no kernel output within {PROBE_TIMEOUT:g}s"
    if "Linux version" not in output:
        return False, f"QEMU exited {returncode} without kernel output"
    if returncode != 0:
        return False, f"QEMU exited {returncode}"
    return True, "the kernel booted and QEMU exited cleanly"


def run_probe(kernel: Path) -> tuple[bool, str]:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is missing or not accessible (is the user in the kvm group?)"
    log.debug("+ " + " ".join(probe_argv(kernel)))
    child = subprocess.Popen(probe_argv(kernel), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        output, _ = child.communicate(timeout=PROBE_TIMEOUT)
        returncode = child.returncode
    except subprocess.TimeoutExpired:
        child.kill()
        output, _ = child.communicate()
        returncode = None
    return judge(returncode, output.decode(errors="replace"))


def read_cached(path: Path, key: str) -> dict | None:
    data = store.read_json(path, SCHEMA)
    if data and data.get("host") == key and isinstance(data.get("kvm"), bool):
        return data
    return None


def kvm_works(kernel: Path, *, path: Path | None = None, key: str | None = None, probe=run_probe) -> bool:
    """The cached verdict for this host, probing once if there is none."""
    forced = os.environ.get("CLOD_ACCEL")
    if forced:
        if forced not in ("kvm", "tcg"):
            raise ClodError(f"CLOD_ACCEL={forced!r} is not kvm or tcg", hint="unset CLOD_ACCEL to let clod probe", exit_code=2)
        return forced == "kvm"
    path = path or cache_path()
    key = key or host_key()
    cached = read_cached(path, key)
    if cached:
        return cached["kvm"]
    started = time.monotonic()
    works, reason = probe(kernel)
    with store.locked("qemu-kvm"):
        store.write_json(path, {"schema": SCHEMA, "host": key, "kvm": works, "reason": reason, "checked": time.time()})
    log.verbose(f"KVM probe ({time.monotonic() - started:.1f}s): {'works' if works else 'unusable'}: {reason}")
    return works


def accel(kernel: Path) -> str:
    if kvm_works(kernel):
        return "kvm"
    reason = (read_cached(cache_path(), host_key()) or {}).get("reason", "CLOD_ACCEL=tcg")
    log.warn(f"KVM is not usable here ({reason}); running under TCG emulation, which is much slower")
    return "tcg"
