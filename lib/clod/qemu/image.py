"""Disk images: the base (mmdebstrap, guest-setup/debian/build-base.sh), the
dst (a qcow2 overlay on the base plus a seed disk), and the seed itself.

A VM directory holds disk.qcow2, vmlinuz, initrd.img, seed.img and
config.json. The dst build boots nothing: what differs from the base (the
home tree, the per-VM SSH host key, clod's authorized key) goes on the seed,
a small ext4 image made with `mke2fs -d` (no root needed), which the guest's
clod-seed applies at boot, the home once per seed-id.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
from pathlib import Path

from clod import paths, proc
from clod.errors import ClodError

BUILD_SCRIPT = paths.ROOT / "guest-setup" / "debian" / "build-base.sh"
BASE_FILES = ("disk.qcow2", "vmlinuz", "initrd.img")
SEED_MIN_BYTES = 16 << 20


def build_base(vm_dir: Path, log_file):
    """Run build-base.sh into vm_dir (a fresh temporary VM directory)."""
    for tool in ("mmdebstrap", "mke2fs", "qemu-img"):
        if not shutil.which(tool) and not shutil.which(tool, path="/usr/sbin:/sbin"):
            raise ClodError(f"{tool} is needed to build the Debian base image", hint=proc.install_hint(tool))
    env = dict(os.environ)
    env["PATH"] = env.get("PATH", "") + ":/usr/sbin:/sbin"
    child = proc.spawn(["sh", str(BUILD_SCRIPT), str(vm_dir)], stdout=log_file, env=env, new_session=False)
    if child.wait() != 0:
        name = getattr(log_file, "name", None)
        tail = ""
        if name:
            log_file.flush()
            tail = ":\n" + proc.tail(Path(name).read_text(errors="replace"), 10)
        raise ClodError(
            f"building the Debian base image failed (build-base.sh exited {child.returncode}){tail}",
            hint=f"full log: {name or 'the build log'}; any earlier base image is untouched",
        )


def make_overlay(base_dir: Path, vm_dir: Path):
    """disk.qcow2 in vm_dir backed by the base's disk (by absolute path, so
    renaming the dst keeps working), and the base's kernel and initrd."""
    proc.run(
        [
            "qemu-img", "create", "-q",
            "-f", "qcow2",
            "-F", "qcow2",
            "-b", str((base_dir / "disk.qcow2").resolve()),
            str(vm_dir / "disk.qcow2"),
        ]
    )  # fmt: skip
    for name in ("vmlinuz", "initrd.img"):
        link_or_copy(base_dir / name, vm_dir / name)


def link_or_copy(src: Path, dst: Path):
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def copy_vm_files(src_dir: Path, dst_dir: Path):
    """A full copy for clone: the disk is copied (sparse-aware, reflink where
    the file system can), the overlay keeps pointing at the same base."""
    for entry in src_dir.iterdir():
        if entry.name in ("disk.qcow2",):
            proc.run(["cp", "--sparse=always", "--reflink=auto", str(entry), str(dst_dir / entry.name)])
        elif entry.is_file() and entry.name not in ("run.json", "run.lock", "serial.log", "helpers.log", "launch.json"):
            shutil.copy2(entry, dst_dir / entry.name)


def write_seed(seed_img: Path, staging: Path, host_key: Path, authorized_key: str, home: Path | None):
    """Build seed.img from the host key pair, clod's public key and an
    optional home tree. `staging` is an empty scratch directory."""
    shutil.copy2(host_key, staging / "ssh_host_ed25519_key")
    shutil.copy2(f"{host_key}.pub", staging / "ssh_host_ed25519_key.pub")
    (staging / "authorized_keys").write_text(authorized_key.strip() + "\n")
    if home is not None:
        shutil.copytree(home, staging / "home", symlinks=True)
    (staging / "seed-id").write_text(tree_digest(staging) + "\n")
    size = max(SEED_MIN_BYTES, 2 * tree_bytes(staging) + (8 << 20))
    tmp = seed_img.with_name(seed_img.name + ".new")
    tmp.unlink(missing_ok=True)
    mke2fs = shutil.which("mke2fs") or shutil.which("mke2fs", path="/usr/sbin:/sbin") or "mke2fs"
    proc.run([mke2fs, "-q", "-F", "-t", "ext4", "-L", "clod-seed", "-E", "root_owner=0:0", "-d", str(staging), str(tmp), f"{size // 1024}k"])
    os.replace(tmp, seed_img)


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.name == "seed-id":
            continue
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        if path.is_symlink():
            digest.update(os.readlink(path).encode())
        elif path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def tree_bytes(root: Path) -> int:
    return sum(p.lstat().st_size for p in root.rglob("*"))


def qcow2_virtual_size(disk: Path) -> int:
    """The guest-visible size in bytes, read from the qcow2 header (offset 24,
    big-endian u64), so `list` needs no qemu-img process."""
    with open(disk, "rb") as f:
        header = f.read(32)
    if len(header) < 32 or header[:4] != b"QFI\xfb":
        raise ClodError(f"{disk} is not a qcow2 image", hint="delete the VM and build it again")
    return struct.unpack(">Q", header[24:32])[0]


def allocated_bytes(vm_dir: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in vm_dir.iterdir() if p.is_file())
