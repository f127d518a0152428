"""SSH into clod's VMs: clod's own key, clod's own known_hosts, nothing of ~/.ssh.

- Key pair: state/ssh/id_ed25519 (0600), made on first use.
- Host keys: each VM's is pinned in state/ssh/known_hosts under the alias
  `clod-<vm name>` (HostKeyAlias), so a VM whose IP changes keeps its pin and
  a different key is refused. clod generates the guest's host key itself
  (`host_key_for`) and pins it before the first connection.
- `-F /dev/null`: the user's ~/.ssh/config (agent forwarding, ControlMaster,
  identities) never applies; `IdentitiesOnly`, no agent.
- Remote commands: ssh joins its arguments with spaces and the guest's login
  shell parses the result once, so every argument is quoted exactly once here.
"""

import os
import secrets
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from clod import log, paths, proc, store
from clod.errors import ClodError

# Terminal types every guest has terminfo for; anything else (xterm-ghostty,
# xterm-kitty, wezterm...) would break backspace and colours there.
KNOWN_TERMS = {
    "xterm", "xterm-color", "xterm-16color", "xterm-256color", "screen", "screen-256color",
    "tmux", "tmux-256color", "vt100", "vt220", "linux", "dumb", "ansi", "rxvt", "rxvt-unicode",
    "rxvt-unicode-256color", "alacritty", "putty",
}  # fmt: skip
FALLBACK_TERM = "xterm-256color"
GUEST_LOCALE = {"macos": "en_US.UTF-8", "linux": "C.UTF-8"}
SSH_UNREACHABLE = 255


@dataclass
class Endpoint:
    vm: str
    host: str
    port: int
    user: str

    @property
    def alias(self) -> str:
        return f"clod-{self.vm}"


def ssh_dir() -> Path:
    directory = paths.state_path("ssh", "x").parent
    directory.chmod(0o700)
    return directory


def key_path() -> Path:
    """clod's private key, created on first use."""
    key = ssh_dir() / "id_ed25519"
    if not key.exists():
        with store.locked("ssh-key"):
            if not key.exists():
                _keygen(key, "clod")
    return key


def public_key() -> str:
    return Path(str(key_path()) + ".pub").read_text().strip()


def _keygen(path: Path, comment: str):
    tmp = path.with_name(path.name + ".new")
    for leftover in (tmp, Path(f"{tmp}.pub")):
        leftover.unlink(missing_ok=True)
    proc.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(tmp)])
    os.chmod(tmp, 0o600)
    os.replace(f"{tmp}.pub", f"{path}.pub")
    os.replace(tmp, path)


def known_hosts() -> Path:
    path = ssh_dir() / "known_hosts"
    path.touch(exist_ok=True)
    return path


def new_host_key(vm: str) -> Path:
    """A fresh ed25519 host key for a VM that clod is building; the guest gets
    the private half, known_hosts the public half (via `pin`)."""
    path = ssh_dir() / "host-keys" / f"{vm}_ed25519"
    path.parent.mkdir(mode=0o700, exist_ok=True)
    path.unlink(missing_ok=True)
    Path(f"{path}.pub").unlink(missing_ok=True)
    _keygen(path, f"clod-{vm}")
    return path


def pin(vm: str, public_key_line: str):
    """Pin `public_key_line` ("ssh-ed25519 AAAA... comment") as vm's host key,
    replacing any earlier pin for that VM only."""
    alias = f"clod-{vm}"
    key_type, key_data = public_key_line.split()[:2]
    with store.locked("known-hosts"):
        path = known_hosts()
        kept = [line for line in path.read_text().splitlines() if line.split(" ", 1)[0] != alias]
        kept.append(f"{alias} {key_type} {key_data}")
        tmp = path.with_name(".known_hosts.tmp")
        tmp.write_text("\n".join(kept) + "\n")
        os.replace(tmp, path)


def copy_pin(src_vm: str, dst_vm: str):
    """A clone has its source's host key; pin it under the clone's name."""
    alias = f"clod-{src_vm}"
    for line in known_hosts().read_text().splitlines():
        fields = line.split()
        if fields and fields[0] == alias:
            pin(dst_vm, " ".join(fields[1:3]))
            return
    raise ClodError(f"no pinned host key for {src_vm}", hint="rebuild it: make rebuild-base")


def unpin(vm: str):
    alias = f"clod-{vm}"
    with store.locked("known-hosts"):
        path = known_hosts()
        lines = path.read_text().splitlines()
        kept = [line for line in lines if line.split(" ", 1)[0] != alias]
        if kept != lines:
            path.write_text("".join(line + "\n" for line in kept))


def base_argv(endpoint: Endpoint, *, batch: bool = True) -> list[str]:
    argv = [
        "ssh",
        "-F", "/dev/null",
        "-i", str(key_path()),
        "-p", str(endpoint.port),
        "-l", endpoint.user,
        "-o", "IdentitiesOnly=yes",
        "-o", "IdentityAgent=none",
        "-o", "PasswordAuthentication=no",
        "-o", "KbdInteractiveAuthentication=no",
        "-o", f"UserKnownHostsFile={known_hosts()}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "StrictHostKeyChecking=yes",
        "-o", "UpdateHostKeys=no",
        "-o", f"HostKeyAlias={endpoint.alias}",
        "-o", "ForwardAgent=no",
        "-o", "ForwardX11=no",
        "-o", "ConnectTimeout=10",
        "-o", "ServerAliveInterval=15",
        "-o", "ServerAliveCountMax=4",
        "-o", "LogLevel=ERROR",
    ]  # fmt: skip
    if batch:
        argv += ["-o", "BatchMode=yes"]
    control = control_dir()
    if control:
        # One SSH connection per VM, kept for a few minutes and shared by
        # every later command: a handshake costs about a second against an
        # emulated (TCG) guest, so attaching again is then nearly free.
        argv += ["-o", "ControlMaster=auto", "-o", f"ControlPath={control}/%C", "-o", "ControlPersist=300"]
    return argv


def control_dir() -> str | None:
    """A private directory for SSH control sockets, with a short path (socket
    paths are limited to ~100 bytes): $XDG_RUNTIME_DIR/clod or /tmp/clod-UID.
    None (no multiplexing) if it cannot be made private to us."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    path = os.path.join(runtime, "clod") if runtime else f"/tmp/clod-{os.getuid()}"
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return None
    info = os.lstat(path)
    if not os.path.isdir(path) or os.path.islink(path) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        return None
    return path


def close_master(endpoint: Endpoint):
    """End the shared connection to a VM that is going away."""
    control = control_dir()
    if control:
        proc.run([*base_argv(endpoint), "-O", "exit", endpoint.host], check=False, timeout=10)


# ---------------------------------------------------------------- sessions


def guest_term(term: str | None) -> str:
    return term if term in KNOWN_TERMS else FALLBACK_TERM


def remote_command(argv: list[str], guest_os: str, project: str | None = None, subdir: str = "", shares: list[str] = ()) -> str:
    """The one string the guest's login shell parses (see guest-setup/home/.zprofile).

    `zsh -l` loads the login config, which links ~/projects/<share> for each
    share and changes into the project; `exec "$@"` then runs argv exactly as
    given, each element quoted once here.
    """
    env = [f"LANG={GUEST_LOCALE[guest_os]}"]
    if project is not None:
        env += [f"CLOD_PROJECT={project}", f"CLOD_SUBDIR={subdir}", f"CLOD_SHARES={'/'.join(shares)}"]
    if os.environ.get("COLORTERM"):
        env.append(f"COLORTERM={os.environ['COLORTERM']}")
    words = ["exec", "env", *env, "zsh", "-l", "-c", 'exec -- "$@"', "clod", *argv]
    return " ".join(shlex.quote(w) for w in words)


def wants_tty() -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty()


def wait_for_sshd(endpoint: Endpoint, timeout: float = 90.0):
    """Return once the guest answers `true` over SSH; diagnose what ssh said
    if it never does. A refused connection means sshd is still starting."""
    if control_dir() and proc.run([*base_argv(endpoint), "-O", "check", endpoint.host], check=False).returncode == 0:
        return  # a shared connection to it is up: sshd answered already
    deadline = time.monotonic() + timeout
    while True:
        result = proc.run([*base_argv(endpoint), "-o", "ConnectTimeout=5", endpoint.host, "true"], check=False)
        if result.returncode == 0:
            return
        error = result.stderr.strip()
        retry = any(s in error for s in ("Connection refused", "Connection reset", "timed out", "closed by remote host",
                                          "Connection closed", "kex_exchange_identification"))  # fmt: skip
        if not retry or time.monotonic() > deadline:
            raise diagnose(endpoint, result.returncode, error, waited=timeout if retry else None)
        log.debug(f"ssh {endpoint.host}:{endpoint.port} not ready: {error}")
        time.sleep(1)


def diagnose(endpoint: Endpoint, status: int, error: str, waited: float | None = None) -> ClodError:
    where = f"{endpoint.user}@{endpoint.host}:{endpoint.port} (VM {endpoint.vm})"
    error = error or "(ssh printed nothing)"
    if "No route to host" in error:
        return ClodError(
            f"cannot reach {where}: {error}",
            hint="on macOS 15+, allow your terminal app under System Settings > Privacy & Security > Local Network, then retry",
        )
    if "Host key verification failed" in error or "REMOTE HOST IDENTIFICATION HAS CHANGED" in error:
        return ClodError(
            f"the SSH host key of {where} does not match the one clod pinned: {error}",
            hint="if you rebuilt or replaced the VM outside clod, rebuild it with clod: make rebuild-dst",
        )
    if "Permission denied" in error:
        return ClodError(f"{where} refused clod's SSH key: {error}", hint="rebuild the VM: make rebuild-dst")
    if waited is not None:
        return ClodError(f"no SSH answer from {where} within {waited:.0f}s: {error}", hint="clod stop, then clod run again")
    return ClodError(f"ssh to {where} failed (exit {status}): {error}")


def session(endpoint: Endpoint, remote: str, *, tty: bool | None = None, ssh_env: dict | None = None) -> int:
    """Run `remote` in the guest attached to our terminal; return its exit status."""
    tty = wants_tty() if tty is None else tty
    marker = None
    if not tty:
        # With a terminal, Ctrl-C travels to the guest as a keystroke. Without
        # one, ssh cannot pass it on and the command would go on running (an
        # agent still editing the project): note the remote process group,
        # which sshd makes the session's, so an interrupt can end it.
        marker = f"/tmp/clod-session-{secrets.token_hex(8)}"
        remote = f"echo $$ > {marker}; {remote}"
    argv = [*base_argv(endpoint), "-t" if tty else "-T", endpoint.host, remote]
    env = dict(os.environ)
    env["TERM"] = guest_term(os.environ.get("TERM"))
    env.update(ssh_env or {})
    try:
        return proc.run_foreground(argv, env=env)
    except KeyboardInterrupt:
        if marker:
            interrupt_remote(endpoint, marker)
        raise


def interrupt_remote(endpoint: Endpoint, marker: str):
    """SIGINT, then SIGTERM, to the remote session's process group."""
    remote = (
        f'group=$(cat {marker} 2>/dev/null) && [ -n "$group" ] && '
        f'{{ kill -INT -- "-$group" 2>/dev/null; sleep 2; kill -TERM -- "-$group" 2>/dev/null; rm -f {marker}; }}; true'
    )
    try:
        run_capture(endpoint, remote, check=False, timeout=20)
    except ClodError as err:
        log.warn(f"could not stop the interrupted command in VM {endpoint.vm}: {err.message}")


def run_capture(endpoint: Endpoint, remote: str, *, input: str | None = None, check: bool = True, timeout: float | None = None):
    """Run `remote` in the guest with its output captured (for build steps)."""
    return proc.run([*base_argv(endpoint), "-T", endpoint.host, remote], input=input, check=check, timeout=timeout)
