"""The QEMU command line, built as a list: one option and its value per line.

Pure code (no processes, no files read) so the tests can check it and
`qemu-wrap run --show-command` can print exactly what would run.

The guest is booted directly (-kernel/-initrd/-append) into clod-init, the
minimal init in guest-setup/debian/rootfs/usr/local/sbin, or plainly into
systemd for the comparison benchmark. Devices:
  vda   the VM's qcow2 disk (an overlay on the base image for dst)
  vdb   the seed disk (read-only ext4: host key, authorized key, home)
  net0  virtio-net to passt over a socketpair: the internet, with --no-map-gw
        so the gateway is not the host's loopback (no socket file: passt
        drops to nobody when started as root and could not bind one in state/)
  ssh0  virtio-net to QEMU's user network with restrict=on: nothing but the
        hostfwd 127.0.0.1:<port> → guest 10.0.3.15:22. (passt 2023-03 shows
        host-loopback connections to the guest from 127.0.0.1 when the gateway
        is not mapped, which the guest kernel drops as martian.)
  ctl   virtio-serial port org.clod.ctl: the guest says "ready", obeys "poweroff"
  fsN   vhost-user-fs (virtiofsd) per mapped project, tag clodN
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote

QEMU = "qemu-system-x86_64"
INIT = "/usr/local/sbin/clod-init"
# virtiofs tags are at most 36 bytes; ours are short and carry no user text.
TAG_PREFIX = "clod"
# clod-init and the image's systemd-networkd files find the two NICs by MAC.
NET_MAC = "52:54:00:c1:0d:01"
SSH_MAC = "52:54:00:c1:0d:02"
SSH_NET = "10.0.3.0/24"
SSH_GUEST = "10.0.3.15"


@dataclass(frozen=True)
class Share:
    tag: str  # virtiofs tag, e.g. clod0
    name: str  # project name, shown in the guest at ~/projects/<name>
    socket: Path  # virtiofsd's vhost-user socket


@dataclass(frozen=True)
class VmSpec:
    name: str
    kernel: Path
    initrd: Path
    disk: Path
    seed: Path | None
    cpus: int
    memory_mib: int
    accel: str  # "kvm" or "tcg"
    net_fd: int  # our end of a socketpair whose other end passt holds
    ssh_port: int  # on the host's 127.0.0.1
    ctl_socket: Path
    qmp_socket: Path
    serial_log: Path
    shares: tuple[Share, ...] = field(default_factory=tuple)
    graphics: bool = False
    plain_boot: bool = False  # stock systemd and kernel command line (benchmark comparison)


def encode_share_name(name: str) -> str:
    """Percent-encode a project name for the kernel command line, where a
    space ends a parameter and a comma separates shares. Unreserved ASCII
    stays readable; the guest's clod-init decodes %XX byte by byte."""
    return quote(name, safe="-_.~")


def decode_share_name(encoded: str) -> str:
    return unquote(encoded, errors="strict")


def shares_parameter(shares: tuple[Share, ...]) -> str | None:
    if not shares:
        return None
    return "clod.shares=" + ",".join(f"{s.tag}={encode_share_name(s.name)}" for s in shares)


def parse_shares_parameter(value: str) -> list[tuple[str, str]]:
    """The inverse of shares_parameter (what clod-init does), for tests."""
    value = value.removeprefix("clod.shares=")
    return [(tag, decode_share_name(enc)) for tag, enc in (item.split("=", 1) for item in value.split(",") if item)]


def kernel_cmdline(spec: VmSpec) -> str:
    words = ["root=/dev/vda", "rw", "console=ttyS0", "panic=-1"]
    if spec.plain_boot:
        return " ".join(words)
    words += [
        f"init={INIT}",
        # Fewer console lines and no speculative-execution workarounds: both
        # cost noticeably under TCG, and the guest is a throwaway sandbox.
        "quiet",
        "mitigations=off",
        "tsc=reliable",
        "8250.nr_uarts=1",
    ]
    shares = shares_parameter(spec.shares)
    if shares:
        words.append(shares)
    return " ".join(words)


def opt(path: Path) -> str:
    """A path inside a QEMU option list, where ',' separates options and ',,'
    stands for a literal comma (the state dir may live under any path)."""
    return str(path).replace(",", ",,")


def qemu_argv(spec: VmSpec) -> list[str]:
    mem = f"{spec.memory_mib}M"
    cmd = [QEMU]
    cmd += ["-name", f"clod-{spec.name},process=clod-{spec.name}"]
    cmd += ["-machine", f"q35,accel={spec.accel},memory-backend=mem"]
    cmd += ["-cpu", "host" if spec.accel == "kvm" else "max"]
    cmd += ["-smp", str(spec.cpus)]
    cmd += ["-m", mem]
    # vhost-user-fs needs guest RAM that virtiofsd can map: a shared memfd.
    cmd += ["-object", f"memory-backend-memfd,id=mem,size={mem},share=on"]
    cmd += ["-nodefaults"]
    cmd += ["-no-user-config"]
    cmd += ["-no-reboot"]
    cmd += ["-kernel", str(spec.kernel)]
    cmd += ["-initrd", str(spec.initrd)]
    cmd += ["-append", kernel_cmdline(spec)]
    cmd += ["-chardev", f"file,id=serial0,path={opt(spec.serial_log)}"]
    cmd += ["-serial", "chardev:serial0"]
    if spec.graphics:
        cmd += ["-vga", "std"]
        cmd += ["-display", "gtk"]
    else:
        cmd += ["-display", "none"]
    cmd += ["-drive", f"if=none,id=root,file={opt(spec.disk)},format=qcow2,discard=unmap,cache=writeback"]
    cmd += ["-device", "virtio-blk-pci,drive=root"]
    if spec.seed is not None:
        cmd += ["-drive", f"if=none,id=seed,file={opt(spec.seed)},format=raw,readonly=on"]
        cmd += ["-device", "virtio-blk-pci,drive=seed"]
    cmd += ["-netdev", f"stream,id=net0,server=off,addr.type=fd,addr.str={spec.net_fd}"]
    cmd += ["-device", f"virtio-net-pci,netdev=net0,mac={NET_MAC}"]
    cmd += ["-netdev", f"user,id=ssh0,restrict=on,ipv6=off,net={SSH_NET},hostfwd=tcp:127.0.0.1:{spec.ssh_port}-{SSH_GUEST}:22"]
    cmd += ["-device", f"virtio-net-pci,netdev=ssh0,mac={SSH_MAC}"]
    cmd += ["-device", "virtio-serial-pci,id=vser0"]
    cmd += ["-chardev", f"socket,id=ctl,path={opt(spec.ctl_socket)},server=on,wait=off"]
    cmd += ["-device", "virtserialport,bus=vser0.0,chardev=ctl,name=org.clod.ctl"]
    for index, share in enumerate(spec.shares):
        cmd += ["-chardev", f"socket,id=fs{index},path={opt(share.socket)}"]
        cmd += ["-device", f"vhost-user-fs-pci,chardev=fs{index},tag={share.tag},queue-size=1024"]
    cmd += ["-qmp", f"unix:{opt(spec.qmp_socket)},server=on,wait=off"]
    cmd += ["-device", "virtio-rng-pci"]
    return cmd


def show(argv: list[str]) -> str:
    """The argv as a shell command, one option and its value per line."""
    lines = [shlex.quote(argv[0])]
    i = 1
    while i < len(argv):
        if argv[i].startswith("-") and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            lines.append(f"{shlex.quote(argv[i])} {shlex.quote(argv[i + 1])}")
            i += 2
        else:
            lines.append(shlex.quote(argv[i]))
            i += 1
    return " \\\n    ".join(lines)
