#!/usr/bin/env bash
# install.sh: clod's macOS base image build. Runs in the guest as the admin user over SSH, while
# the Cirrus Labs image still allows passwordless sudo. Must run under macOS's bash 3.2.
#
# Environment:
#   CLOD_HOSTNAME        host/computer name (default clod-macos)
#   CLOD_AUTHORIZED_KEY  clod's public key; added to ~/.ssh/authorized_keys. Password logins are
#                        turned off only once a key is there.
#   ALLOW_SUDO           1: keep passwordless sudo for the user (/etc/sudoers.d/clod). Default 0:
#                        remove the image's own NOPASSWD rule (the last step of the build).
#   CLOD_BREW_FORMULAE   replaces the default formula list; CLOD_BREW_EXTRA adds to it
#   CLOD_ETC_DIR         /etc, for tests
# Idempotent: a second run changes nothing (given the sudo policy it leaves still allows it).
set -euo pipefail

CLOD_SCRIPT_DIR=$(cd "$(dirname "$0")" && pwd)
if [ -f "$CLOD_SCRIPT_DIR/lib.sh" ]; then
    # shellcheck source=../common/lib.sh
    . "$CLOD_SCRIPT_DIR/lib.sh"
else
    # shellcheck source=../common/lib.sh
    . "$CLOD_SCRIPT_DIR/../common/lib.sh"
fi

HOST_NAME=${CLOD_HOSTNAME:-clod-macos}
AUTHORIZED_KEY=${CLOD_AUTHORIZED_KEY:-}
ALLOW_SUDO=${ALLOW_SUDO:-0}
ETC=${CLOD_ETC_DIR:-/etc}
GUEST_USER=$(id -un)
DEFAULT_FORMULAE="bash coreutils findutils gnu-sed git git-lfs gh jq node python ripgrep fd tree wget uv zsh-completions"
FORMULAE="${CLOD_BREW_FORMULAE:-$DEFAULT_FORMULAE} ${CLOD_BREW_EXTRA:-}"
SSHD_DROPIN="$ETC/ssh/sshd_config.d/000-clod.conf"
SUDOERS_D="$ETC/sudoers.d"
CLOD_SUDO_RULE="$SUDOERS_D/clod"
# Cirrus Labs' macos-image-templates grant admin passwordless sudo with this drop-in
# ("admin ALL=(ALL) NOPASSWD: ALL", written with visudo during their Packer build).
IMAGE_SUDO_RULE="$SUDOERS_D/$GUEST_USER-nopasswd"

export HOMEBREW_NO_ANALYTICS=1 HOMEBREW_NO_ENV_HINTS=1 HOMEBREW_NO_INSTALL_CLEANUP=1 NONINTERACTIVE=1

preflight() {
    local version
    version=$(sw_vers -productVersion) || die "sw_vers failed: this script is for macOS guests"
    info "macOS $version, user $GUEST_USER"
    if [ "$(id -u)" -eq 0 ]; then
        die "run install.sh as the admin user, not root" "ssh in as admin; the script uses sudo itself"
    fi
    as_root true || die "passwordless sudo is not available for $GUEST_USER" \
        "the base build needs the image's NOPASSWD rule; start from a fresh Cirrus Labs image"
}

set_host_name() {
    case "$HOST_NAME" in
        '' | -* | *[!A-Za-z0-9-]*)
            die "invalid host name '$HOST_NAME'" "use letters, digits and '-' (CLOD_HOSTNAME)" ;;
    esac
    local key current
    for key in HostName LocalHostName ComputerName; do
        current=$(scutil --get "$key" 2>/dev/null || true)
        if [ "$current" = "$HOST_NAME" ]; then
            continue
        fi
        as_root scutil --set "$key" "$HOST_NAME"
        info "$key = $HOST_NAME"
    done
}

install_ssh_key() {
    local keys="$HOME/.ssh/authorized_keys"
    mkdir -p "$HOME/.ssh"
    chmod 700 "$HOME/.ssh"
    if [ -z "$AUTHORIZED_KEY" ]; then
        info "no CLOD_AUTHORIZED_KEY given; authorized_keys left as it is"
        return 0
    fi
    case "$AUTHORIZED_KEY" in
        *"
"*) die "CLOD_AUTHORIZED_KEY must be a single line" ;;
        ssh-* | ecdsa-* | sk-*) ;;
        *) die "CLOD_AUTHORIZED_KEY does not look like an OpenSSH public key" ;;
    esac
    if [ ! -f "$keys" ]; then : >"$keys"; fi
    chmod 600 "$keys"
    if grep -qxF -- "$AUTHORIZED_KEY" "$keys"; then
        return 0
    fi
    # Do not glue the key onto a last line that lacks its newline.
    if [ -s "$keys" ] && [ -n "$(tail -c 1 "$keys")" ]; then
        printf '\n' >>"$keys"
    fi
    printf '%s\n' "$AUTHORIZED_KEY" >>"$keys"
    info "added clod's key to $keys"
}

enable_remote_login() {
    local state
    state=$(as_root systemsetup -getremotelogin 2>&1 || true)
    case "$state" in
        *": On"*) info "Remote Login is on"; return 0 ;;
    esac
    if as_root systemsetup -setremotelogin on; then
        info "Remote Login turned on"
        return 0
    fi
    # systemsetup needs Full Disk Access on recent macOS; being connected over SSH proves that
    # Remote Login is on already.
    if [ -n "${SSH_CONNECTION:-}" ]; then
        warn "systemsetup could not switch Remote Login on, but this session came over SSH"
        return 0
    fi
    die "cannot turn Remote Login on" "System Settings > General > Sharing > Remote Login"
}

disable_password_login() {
    local keys="$HOME/.ssh/authorized_keys"
    if [ -n "$AUTHORIZED_KEY" ]; then
        grep -qxF -- "$AUTHORIZED_KEY" "$keys" || die "clod's key is not in $keys; password login stays on"
    elif ! grep -qE '^(ssh-|ecdsa-|sk-)' "$keys" 2>/dev/null; then
        warn "no public key in $keys: password login stays on so the host can still log in"
        return 0
    fi
    # sshd uses the first value it reads for each keyword and macOS includes sshd_config.d/* at
    # the top of sshd_config, so a "000-" name wins over the system's own drop-ins.
    local wanted="# Written by clod's base build: key-only SSH logins.
PasswordAuthentication no
KbdInteractiveAuthentication no"
    if [ -f "$SSHD_DROPIN" ] && [ "$(cat "$SSHD_DROPIN")" = "$wanted" ]; then
        info "password login already off"
        return 0
    fi
    if ! grep -qs '^Include /etc/ssh/sshd_config.d/' "$ETC/ssh/sshd_config"; then
        warn "$ETC/ssh/sshd_config does not include sshd_config.d/*; the drop-in may be ignored"
    fi
    as_root mkdir -p "${SSHD_DROPIN%/*}"
    printf '%s\n' "$wanted" | as_root tee "$SSHD_DROPIN" >/dev/null
    as_root chmod 644 "$SSHD_DROPIN"
    # macOS starts sshd per connection, so the next login reads the new file; check it first.
    if ! as_root sshd -t; then
        as_root rm -f "$SSHD_DROPIN"
        die "sshd rejected the configuration; removed $SSHD_DROPIN"
    fi
    info "password login off ($SSHD_DROPIN)"
}

use_zsh_login_shell() {
    local shell
    shell=$(dscl . -read "/Users/$GUEST_USER" UserShell 2>/dev/null | sed -n 's/^UserShell: //p')
    if [ "$shell" = /bin/zsh ]; then
        return 0
    fi
    as_root dscl . -create "/Users/$GUEST_USER" UserShell /bin/zsh
    info "login shell: /bin/zsh (was ${shell:-unset})"
}

find_brew() {
    local candidate
    candidate=$(command -v brew 2>/dev/null || true)
    if [ -n "$candidate" ]; then
        printf '%s\n' "$candidate"
        return 0
    fi
    for candidate in /opt/homebrew/bin/brew /usr/local/bin/brew; do
        if [ -x "$candidate" ]; then
            printf '%s\n' "$candidate"
            return 0
        fi
    done
    return 1
}

ensure_homebrew() {
    local brew
    if ! brew=$(find_brew); then
        # Cirrus Labs' xcode images ship Homebrew; a vanilla image does not.
        info "installing Homebrew with its official script"
        /bin/bash -c "$(curl -fsSL https://raw.githubusercontent.com/Homebrew/install/HEAD/install.sh)"
        brew=$(find_brew) || die "Homebrew's installer finished but brew is not there"
    fi
    PATH="${brew%/*}:$PATH"
    export PATH
    info "brew: $brew"
}

install_formulae() {
    local formula missing=""
    for formula in $FORMULAE; do
        # `brew list --versions NAME` resolves aliases (python -> python@3.x) and fails when
        # the formula is not installed.
        if brew list --versions "$formula" >/dev/null 2>&1; then
            continue
        fi
        missing="$missing $formula"
    done
    if [ -z "$missing" ]; then
        info "all formulae installed"
        return 0
    fi
    info "installing:$missing"
    # shellcheck disable=SC2086 # formula names are single words
    brew install $missing
}

install_claude_code() {
    command -v npm >/dev/null 2>&1 || die "npm is missing" "the node formula provides it"
    if npm ls -g --depth=0 @anthropic-ai/claude-code >/dev/null 2>&1; then
        info "Claude Code already installed"
    else
        npm install -g @anthropic-ai/claude-code
    fi
    local claude
    claude="$(npm prefix -g)/bin/claude"
    [ -x "$claude" ] || die "npm installed Claude Code but $claude is missing"
    info "Claude Code $("$claude" --version 2>/dev/null || echo '(version unknown)')"
}

detach_installer_images() {
    # `hdiutil info` lists each attached image's devices as "/dev/diskN<TAB>type<TAB>mount point".
    local volumes volume
    volumes=$(hdiutil info | awk -F '\t' '$1 ~ /^\/dev\/disk/ && $NF ~ /^\/Volumes\/.*Install/ { print $NF }')
    if [ -z "$volumes" ]; then
        info "no installer images attached"
        return 0
    fi
    printf '%s\n' "$volumes" | while IFS= read -r volume; do
        info "detaching $volume"
        hdiutil detach "$volume" >/dev/null || as_root hdiutil detach -force "$volume" >/dev/null
    done
}

flush_directory_caches() {
    # Write user and group changes (the login shell above) through to disk before the VM is
    # stopped and saved as the base image.
    as_root dscacheutil -flushcache
    as_root killall -HUP opendirectoryd
}

# write_sudo_rule: /etc/sudoers.d/clod, validated before it can take effect. The temporary name
# contains a '.', which sudo's #includedir skips, so a bad file is never live.
write_sudo_rule() {
    local rule="$GUEST_USER ALL=(ALL) NOPASSWD: ALL"
    local wanted="# Written by clod's base build (ALLOW_SUDO=1).
$rule"
    if [ -f "$CLOD_SUDO_RULE" ] && [ "$(as_root cat "$CLOD_SUDO_RULE")" = "$wanted" ]; then
        info "passwordless sudo rule already in place"
        return 0
    fi
    local tmp="$SUDOERS_D/.clod.tmp"
    as_root mkdir -p "$SUDOERS_D"
    printf '%s\n' "$wanted" | as_root tee "$tmp" >/dev/null
    as_root chmod 0440 "$tmp"
    if ! as_root visudo -c -f "$tmp" >/dev/null; then
        as_root rm -f "$tmp"
        die "visudo rejected the sudo rule for $GUEST_USER"
    fi
    as_root mv -f "$tmp" "$CLOD_SUDO_RULE"
    info "passwordless sudo for $GUEST_USER ($CLOD_SUDO_RULE)"
}

# set_sudo_policy: the LAST step, because every step before it needs passwordless sudo.
set_sudo_policy() {
    if is_true "$ALLOW_SUDO"; then
        write_sudo_rule
    elif [ -f "$CLOD_SUDO_RULE" ]; then
        as_root rm -f "$CLOD_SUDO_RULE"
        info "removed $CLOD_SUDO_RULE"
    fi
    if [ -f "$IMAGE_SUDO_RULE" ]; then
        # Removing it ends passwordless sudo (unless ALLOW_SUDO wrote clod's rule above).
        as_root rm -f "$IMAGE_SUDO_RULE"
        info "removed the image's rule $IMAGE_SUDO_RULE"
    fi
    if is_true "$ALLOW_SUDO"; then
        info "sudo: passwordless for $GUEST_USER"
    else
        info "sudo: asks for $GUEST_USER's password"
    fi
}

step "preflight" preflight
step "set host name" set_host_name
step "install clod's SSH key" install_ssh_key
step "enable Remote Login" enable_remote_login
step "disable SSH password login" disable_password_login
step "use zsh as the login shell" use_zsh_login_shell
step "ensure Homebrew" ensure_homebrew
step "install Homebrew formulae" install_formulae
step "install Claude Code" install_claude_code
step "detach installer images" detach_installer_images
step "flush directory caches" flush_directory_caches
step "set sudo policy" set_sudo_policy
log "==> macOS base install done"
