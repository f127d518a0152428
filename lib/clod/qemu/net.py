"""User-mode networking through passt.

passt gives the guest 10.0.2.15/24 behind gateway 10.0.2.2 (the same numbers
clod-init and the image's systemd-networkd file use) for outbound traffic,
and with --no-map-gw does NOT
turn traffic to the gateway into connections to the host's loopback, which
QEMU's own user network (slirp) would. DNS queries to 10.0.2.3 go to the
host's resolver. SSH comes in on a second NIC (see argv.py). passt talks to QEMU over one end of a socketpair (--fd)
and exits when QEMU closes the other.
"""

from __future__ import annotations

import socket

GUEST_ADDRESS = "10.0.2.15"
PREFIX_LENGTH = 24
GATEWAY = "10.0.2.2"
DNS = "10.0.2.3"
SSH_HOST = "127.0.0.1"
GUEST_SSH_PORT = 22


def free_port(host: str = SSH_HOST) -> int:
    """A port the kernel says is free now. passt binds it moments later; if
    another program takes it first, passt fails and the caller retries."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def passt_argv(fd: int) -> list[str]:
    cmd = ["passt"]
    cmd += ["--foreground"]
    cmd += ["--quiet"]
    cmd += ["--stderr"]
    cmd += ["--fd", str(fd)]
    cmd += ["--address", GUEST_ADDRESS]
    cmd += ["--netmask", str(PREFIX_LENGTH)]
    cmd += ["--gateway", GATEWAY]
    cmd += ["--no-map-gw"]
    cmd += ["--dns-forward", DNS]
    cmd += ["--tcp-ports", "none"]
    cmd += ["--udp-ports", "none"]
    return cmd
