"""Boot the real Debian guest with QEMU (TCG when KVM does not work: minutes).

The base is built once per session (tests/e2e/conftest.py, about 2 minutes
here); this test drives the driver directly, below clod's own commands.
"""

import http.server
import os
import subprocess
import threading

import pytest

pytestmark = pytest.mark.e2e
pytest_plugins = ["qemu_host"]

BASE = "clodpod-debian-base"


@pytest.fixture
def driver(qemu_env, monkeypatch):
    """The QEMU driver in the session's state dir, whose base is built."""
    monkeypatch.setenv("CLOD_STATE_DIR", qemu_env["CLOD_STATE_DIR"])
    from clod.qemu import QemuDriver

    return QemuDriver()


LOOPBACK_TOKEN = "clod-e2e-loopback-token"


@pytest.fixture
def loopback_server():
    """An HTTP server on the host's 127.0.0.1 that the guest must not reach.
    It answers with a token: a network that intercepts all TCP (an egress
    proxy) may answer the guest too, but never with the token."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(LOOPBACK_TOKEN.encode())

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()


def guest(driver, vm_name: str, command: str, check: bool = True) -> subprocess.CompletedProcess:
    """ssh into the guest with the pinned host key only (StrictHostKeyChecking=yes)."""
    from clod import ssh

    endpoint = driver.ssh_endpoint(vm_name)
    argv = [
        "ssh", "-F", "/dev/null",
        "-i", str(ssh.key_path()),
        "-o", "IdentitiesOnly=yes",
        "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={ssh.known_hosts()}",
        "-o", f"HostKeyAlias=clod-{vm_name}",
        "-p", str(endpoint["port"]),
        f"{endpoint['user']}@{endpoint['host']}",
        command,
    ]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=check, stdin=subprocess.DEVNULL)


def test_boot_ssh_share_and_isolation(driver, tmp_path, loopback_server):
    project = tmp_path / "my project é"
    project.mkdir()
    (project / "from-host.txt").write_text("hello from the host\n")
    home = tmp_path / "home"
    (home / ".config").mkdir(parents=True)
    (home / ".zshrc").write_text("# e2e home\n")
    driver.build_dst(BASE, "e2e-dst", home)
    try:
        driver.run("e2e-dst", [("my project é", str(project))])
        assert driver.get("e2e-dst")["Running"] is True
        assert driver.running_dirs("e2e-dst") == [("my project é", str(project))]

        assert guest(driver, "e2e-dst", "id -un").stdout.strip() == "clod"
        assert guest(driver, "e2e-dst", "cat ~/.zshrc").stdout == "# e2e home\n"

        # The share: host files readable and writable, guest files owned by the host user.
        shared = "~/projects/'my project é'"
        assert guest(driver, "e2e-dst", f"cat {shared}/from-host.txt").stdout == "hello from the host\n"
        guest(driver, "e2e-dst", f"echo guest >> {shared}/from-host.txt && echo made > {shared}/from-guest.txt")
        created = project / "from-guest.txt"
        assert created.read_text() == "made\n"
        assert (created.stat().st_uid, created.stat().st_gid) == (os.getuid(), os.getgid())
        assert (project / "from-host.txt").read_text().endswith("guest\n")

        # The host's loopback services are out of reach, through either NIC's gateway.
        for address in ("10.0.2.2", "10.0.3.2"):
            probe = guest(driver, "e2e-dst", f"curl -s --max-time 5 http://{address}:{loopback_server}/", check=False)
            assert LOOPBACK_TOKEN not in probe.stdout, f"the guest reached the host's 127.0.0.1:{loopback_server} via {address}"
        # ... while the internet (Debian's mirror, with DNS) is reachable.
        outbound = guest(driver, "e2e-dst", "curl -s -o /dev/null -w '%{http_code}' --max-time 30 http://deb.debian.org/debian/", check=False)
        assert outbound.stdout.startswith(("2", "3")), f"no outbound HTTP from the guest: {outbound.stdout!r} {outbound.stderr!r}"
    finally:
        driver.stop("e2e-dst", timeout=30)
    assert driver.get("e2e-dst")["State"] == "stopped"
    driver.stop("e2e-dst")  # idempotent
