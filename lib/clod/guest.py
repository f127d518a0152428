"""Running the guest-setup scripts inside a VM over SSH (never `tart exec`,
which needs a guest agent that images may lack).

Each script logs `==> step: NAME` on stderr as it goes (guest-setup/common/
lib.sh). A failing script fails the build naming its last step and showing the
tail of its output; the whole output is kept in state/logs/.
"""

import io
import os
import shlex
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from clod import log, paths, proc, ssh
from clod.errors import ClodError

SETUP_DIR = ".cache/clod-setup"  # where guest-setup/ lands in the guest home
HOME_STAGING = ".cache/clod-home-staging"  # where the merged home lands for configure-home.sh


def tar_of(entries: dict[str, Path]) -> bytes:
    """A tar stream holding each local path under its archive name."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, path in entries.items():
            tar.add(str(path), arcname=name)
    return buffer.getvalue()


def upload(endpoint: ssh.Endpoint, entries: dict[str, Path], remote_dir: str):
    """Replace remote_dir (relative to the guest home) with `entries`."""
    quoted = shlex.quote(remote_dir)
    remote = f"rm -rf {quoted} && mkdir -p {quoted} && tar -xf - -C {quoted}"
    ssh.run_capture(endpoint, remote, input=tar_of(entries))


def upload_setup(endpoint: ssh.Endpoint, os_dir: str):
    setup = paths.ROOT / "guest-setup"
    upload(endpoint, {"common": setup / "common", os_dir: setup / os_dir}, SETUP_DIR)


def run_step(endpoint: ssh.Endpoint, script: str, env: dict[str, str], what: str):
    """Run guest-setup/<script> in the guest with env; stream its step lines
    to the user and everything to a log; fail naming the step that failed."""
    assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    remote = f"cd && {assignments} bash {shlex.quote(SETUP_DIR + '/' + script)}"
    log_path = paths.state_path("logs", f"{endpoint.vm}-{Path(script).stem}.log")
    argv = [*ssh.base_argv(endpoint), "-T", endpoint.host, remote]
    log.debug("+ " + shlex.join(argv))
    last_step, lines = None, []
    with open(log_path, "w") as saved:
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True, errors="replace")  # fmt: skip
        for line in child.stdout:
            saved.write(line)
            lines.append(line.rstrip("\n"))
            if line.startswith("==> step: "):
                last_step = line.removeprefix("==> step: ").strip()
                log.info(f"{what}: {last_step}")
            elif log.level >= log.VERBOSE:
                sys.stderr.write(line)
        status = child.wait()
    if status != 0:
        tail = "\n".join(lines[-12:])
        where = f"step '{last_step}'" if last_step else f"{script} (before its first step)"
        raise ClodError(
            f"{what} failed in {where} (exit {status}) on VM {endpoint.vm}:\n{tail}",
            hint=f"full output: {log_path}; any earlier image is untouched",
        )


def bootstrap_key(endpoint: ssh.Endpoint, password: str, timeout: float = 180.0):
    """First contact with a freshly pulled image: log in with its password
    (OpenSSH's SSH_ASKPASS, no extra tool), add clod's public key, and pin the
    host key seen on this first connection."""
    key = ssh.public_key()
    remote = (
        "umask 077 && mkdir -p ~/.ssh && touch ~/.ssh/authorized_keys && "
        f"(grep -qxF {shlex.quote(key)} ~/.ssh/authorized_keys || printf '%s\\n' {shlex.quote(key)} >> ~/.ssh/authorized_keys)"
    )
    with tempfile.TemporaryDirectory(prefix="clod-askpass-") as scratch:
        askpass = Path(scratch, "askpass")
        askpass.write_text('#!/bin/sh\nprintf "%s\\n" "$CLOD_ASKPASS_PASSWORD"\n')
        askpass.chmod(0o700)
        first_seen = Path(scratch, "known_hosts")
        argv = [
            "ssh", "-F", "/dev/null", "-p", str(endpoint.port), "-l", endpoint.user,
            "-i", str(ssh.key_path()), "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
            "-o", "StrictHostKeyChecking=accept-new", "-o", f"UserKnownHostsFile={first_seen}",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", f"HostKeyAlias={endpoint.alias}",
            "-o", "PreferredAuthentications=publickey,password", "-o", "NumberOfPasswordPrompts=1",
            "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR", "-T", endpoint.host, remote,
        ]  # fmt: skip
        env = dict(os.environ, SSH_ASKPASS=str(askpass), SSH_ASKPASS_REQUIRE="force", CLOD_ASKPASS_PASSWORD=password)
        env.setdefault("DISPLAY", ":0")
        deadline = time.monotonic() + timeout
        while True:
            result = proc.run(argv, check=False, env=env)
            if result.returncode == 0:
                break
            if "Connection refused" not in result.stderr and "timed out" not in result.stderr or time.monotonic() > deadline:
                raise ssh.diagnose(endpoint, result.returncode, result.stderr.strip())
            time.sleep(2)
        seen = [line.split() for line in first_seen.read_text().splitlines() if line.strip()]
    if not seen:
        raise ClodError(f"no host key recorded for VM {endpoint.vm} on first contact")
    ssh.pin(endpoint.vm, " ".join(seen[0][1:3]))
