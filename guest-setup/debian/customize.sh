#!/bin/sh
# Runs inside the new root file system (chroot) at the end of mmdebstrap: the guest user, Claude
# Code from npm, sshd and the two boot paths (clod-init, and stock systemd for comparison).
set -eu
log() { printf 'customize: %s\n' "$*" >&2; }

# Before the first boot nothing may depend on the build host: no host keys, no machine id.
rm -f /etc/ssh/ssh_host_*
: > /etc/machine-id
printf 'clod\n' > /etc/hostname
printf '127.0.0.1 localhost\n127.0.1.1 clod\n::1 localhost ip6-localhost ip6-loopback\n' > /etc/hosts
printf 'LANG=C.UTF-8\n' > /etc/default/locale
printf '/dev/vda / ext4 defaults,noatime 0 1\n' > /etc/fstab

log "initrd with only the modules needed to mount the root file system"
printf 'virtio_pci\nvirtio_blk\next4\n' >> /etc/initramfs-tools/modules
update-initramfs -u -k all

log "guest user clod (uid/gid 1000, zsh; passwordless sudo only with ALLOW_SUDO=1)"
groupadd --gid 1000 clod
useradd --uid 1000 --gid 1000 --create-home --shell /usr/bin/zsh clod
if [ "${ALLOW_SUDO:-0}" = 1 ]; then
    usermod --append --groups sudo clod
    printf 'clod ALL=(ALL) NOPASSWD: ALL\n' > /etc/sudoers.d/clod
    chmod 0440 /etc/sudoers.d/clod
fi
# An empty .zshrc keeps zsh's first-run wizard from stopping a non-interactive login; the home
# from guest-setup replaces it at dst build.
touch /home/clod/.zshrc && chown 1000:1000 /home/clod/.zshrc
mkdir -p /home/clod/projects && chown 1000:1000 /home/clod/projects
passwd --lock root >/dev/null
mkdir -p /mnt/clod /var/lib/clod /etc/ssh/clod

log "Claude Code ${CLAUDE_CODE_VERSION} from npm"
npm install --global --no-audit --no-fund "@anthropic-ai/claude-code@${CLAUDE_CODE_VERSION}"
npm cache clean --force 2>/dev/null || true
claude_reported=$(claude --version)
log "claude --version: $claude_reported"

log "stock systemd boot: networkd, seed before sshd"
systemctl enable systemd-networkd.service clod-seed.service clod-ctl.service ssh.service
chmod 0755 /usr/local/sbin/clod-*

apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/debconf/*-old /var/log/*.log /root/.npm
