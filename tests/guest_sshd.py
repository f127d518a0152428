"""A real sshd on 127.0.0.1 playing a macOS guest, for the Tart pipeline tests.

It runs as root in a private mount namespace where a temporary directory is
bind-mounted over /root, so the "guest user" (root, MACOS_USER=root) has a
throwaway home: the dst build's dotfiles land there, never in the real /root.
The session PATH puts the stub macOS tools (tests/fakes/guest-macos) first.
Needs root (for the mount namespace); tests skip otherwise.
"""

import os
import shutil
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

FAKES = Path(__file__).resolve().parent / "fakes"
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def available() -> str | None:
    """None if a guest sshd can run here, else the reason it cannot."""
    if os.geteuid() != 0:
        return "the fake guest sshd needs root (a private mount namespace over /root)"
    if not os.path.exists(SSHD):
        return "sshd is not installed (apt-get install openssh-server)"
    if not shutil.which("unshare"):
        return "unshare (util-linux) is missing"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def guest_sshd(workdir: Path, authorized_key: str, env: dict[str, str]):
    """Start sshd; yield (port, guest home). `env` is set in every session."""
    workdir.mkdir(parents=True, exist_ok=True)
    home = workdir / "guest-home"
    (home / ".ssh").mkdir(parents=True, exist_ok=True)
    (home / ".ssh" / "authorized_keys").write_text(authorized_key + "\n")
    host_key = workdir / "ssh_host_ed25519_key"
    if not host_key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
    port = free_port()
    session_path = f"{FAKES / 'guest-macos'}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
    set_env = " ".join(f'"{k}={v}"' for k, v in {"PATH": session_path, **env}.items())
    config = workdir / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nPidFile {workdir}/sshd.pid\n"
        "AuthorizedKeysFile .ssh/authorized_keys\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "UsePAM no\nPermitRootLogin prohibit-password\nStrictModes no\nPrintMotd no\nAcceptEnv none\n"
        f"SetEnv {set_env}\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)
    log = open(workdir / "sshd.log", "ab")
    child = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
         'mount --bind "$1" /root && exec "$2" -D -e -f "$3"', "sh", str(home), SSHD, str(config)],
        stdout=log, stderr=log, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if child.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"sshd did not start: {(workdir / 'sshd.log').read_text()}") from None
                time.sleep(0.05)
        yield port, home
    finally:
        child.terminate()
        child.wait(timeout=10)
        log.close()
