#!/bin/sh
# Build the clodpod-debian-base disk: a Debian 12 root file system made by mmdebstrap from
# Debian's packages only, Claude Code installed from npm, packed into an ext4 file system
# (no partition table, the guest mounts /dev/vda as root) inside a qcow2 file, plus the kernel
# and initrd copied next to it for direct kernel boot.
#
# Usage: build-base.sh OUT_DIR
#   Environment: CLAUDE_CODE_VERSION (default 2.1.197), DEBIAN_SUITE (default bookworm), DEBIAN_MIRROR, DISK_SIZE (default 8G),
#                MMDEBSTRAP_MODE (default auto: root mode as root, unshare mode otherwise).
# Writes OUT_DIR/disk.qcow2, OUT_DIR/vmlinuz, OUT_DIR/initrd.img, OUT_DIR/build-info.json.
# Root is not needed where the host allows unprivileged user namespaces and the user has
# /etc/subuid and /etc/subgid entries (mmdebstrap's unshare mode); every other step is rootless.
# shellcheck disable=SC2016  # mmdebstrap hooks and sh -c scripts get '$1'/'$0' literally, on purpose
set -eu

out_dir=${1:?usage: build-base.sh OUT_DIR}
here=$(cd "$(dirname "$0")" && pwd)
claude_version=${CLAUDE_CODE_VERSION:-2.1.197}
suite=${DEBIAN_SUITE:-bookworm}
case $suite in
    *[!a-z]* | "") echo "build-base.sh: DEBIAN_SUITE='$suite' is not a Debian release name (e.g. bookworm)" >&2; exit 2 ;;
esac
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
disk_size=${DISK_SIZE:-8G}
mode=${MMDEBSTRAP_MODE:-auto}

packages="linux-image-cloud-amd64 systemd-sysv openssh-server sudo git curl ca-certificates
zsh nodejs npm ripgrep jq python3 locales less procps iproute2 tini kmod e2fsprogs zstd"

log() { printf '%s build-base: %s\n' "$(date +%T)" "$*" >&2; }

mkdir -p "$out_dir"
work=$(mktemp -d "$out_dir/.build.XXXXXX")
# Without root, the unpacked tree belongs to subordinate ids: only the user namespace can remove it.
cleanup() { rm -rf "$work" 2>/dev/null || unshare --map-root-user --map-auto rm -rf "$work"; }
trap cleanup EXIT INT TERM

start=$(date +%s)
# npm trusts what the build host trusts (a TLS-inspecting proxy's CA, say), for the build only:
# the file is copied into the chroot's /tmp and removed with it; it is not installed in the image.
build_ca=/tmp/clod-build-ca.crt
if [ -n "${NODE_EXTRA_CA_CERTS:-}" ] && [ -r "$NODE_EXTRA_CA_CERTS" ]; then
    cp "$NODE_EXTRA_CA_CERTS" "$work/clod-build-ca.crt"
else
    : > "$work/clod-build-ca.crt"
fi
# The files under rootfs/ go into the image owned by root whoever builds it.
tar --owner=0 --group=0 --numeric-owner -C "$here/rootfs" -cf "$work/overlay.tar" .
log "mmdebstrap (mode $mode) → $work/rootfs.tar"
# The customize hook runs inside the chroot with /proc, /sys and /dev mounted and the host's
# network (npm needs it); it gets the claude version through the environment.
CLAUDE_CODE_VERSION=$claude_version NODE_EXTRA_CA_CERTS=$build_ca mmdebstrap \
    --mode="$mode" \
    --variant=apt \
    --format=tar \
    --include="$(echo "$packages" | tr ' ' ,)" \
    --aptopt='Acquire::Retries "3"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --essential-hook='mkdir -p "$1/etc/initramfs-tools/conf.d"' \
    --essential-hook="copy-in $here/rootfs/etc/initramfs-tools/conf.d/clod.conf /etc/initramfs-tools/conf.d" \
    --customize-hook="tar-in $work/overlay.tar /" \
    --customize-hook="copy-in $here/customize.sh $work/clod-build-ca.crt /tmp" \
    --customize-hook='chroot "$1" /bin/sh /tmp/customize.sh' \
    --customize-hook='rm -f "$1/tmp/customize.sh" "$1/tmp/clod-build-ca.crt"' \
    "$suite" "$work/rootfs.tar" \
    "deb $mirror $suite main" \
    "deb $mirror $suite-updates main" \
    "deb http://deb.debian.org/debian-security $suite-security main"
log "mmdebstrap done in $(( $(date +%s) - start )) s"

# The kernel and initrd are root-only readable in the tarball's metadata, but reading them out
# of the tar stream needs no privileges.
kernel=$(tar -tf "$work/rootfs.tar" | grep -E '^\./boot/vmlinuz-' | head -n1)
initrd=$(tar -tf "$work/rootfs.tar" | grep -E '^\./boot/initrd\.img-' | head -n1)
tar -xOf "$work/rootfs.tar" "$kernel" > "$work/vmlinuz"
tar -xOf "$work/rootfs.tar" "$initrd" > "$work/initrd.img"

log "mke2fs -d ($disk_size ext4)"
# e2fsprogs 1.47.0 (Debian 12) cannot read a tarball with -d (1.47.1 can), so the tree is unpacked
# first, keeping owners: as root directly, otherwise inside a user namespace where the user's
# subordinate ids stand in for the guest's (unshare --map-auto, /etc/subuid as for mmdebstrap).
# Device nodes cannot be made in a user namespace and are not needed: clod-init mounts devtmpfs.
populate='mkdir "$0/root" && tar --numeric-owner --exclude="./dev/?*" -xpf "$0/rootfs.tar" -C "$0/root" && rm "$0/rootfs.tar" &&
    mke2fs -q -F -t ext4 -L clod-root -E root_owner=0:0 -d "$0/root" "$0/root.img" "$1" && rm -rf "$0/root"'
if [ "$(id -u)" = 0 ]; then
    sh -c "$populate" "$work" "$disk_size"
else
    unshare --map-root-user --map-auto sh -c "$populate" "$work" "$disk_size"
fi
log "qemu-img convert → qcow2"
qemu-img convert -f raw -O qcow2 "$work/root.img" "$work/disk.qcow2"
rm -f "$work/root.img"

printf '{"claude_code_version": "%s", "kernel": "%s", "built": "%s", "seconds": %s}\n' \
    "$claude_version" "${kernel#./boot/}" "$(date -u +%FT%TZ)" "$(( $(date +%s) - start ))" \
    > "$work/build-info.json"
for f in disk.qcow2 vmlinuz initrd.img build-info.json; do mv -f "$work/$f" "$out_dir/$f"; done
log "done in $(( $(date +%s) - start )) s: $(du -m "$out_dir/disk.qcow2" | cut -f1) MiB disk"
