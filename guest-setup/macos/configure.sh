#!/usr/bin/env bash
# configure.sh: clod's macOS dst image build. Runs in the guest as the guest user (no sudo).
# The host has copied the merged home tree to ~/.cache/clod-home-staging (see
# configure-home.sh for the environment it passes). Must run under macOS's bash 3.2.
#
# Extra environment:
#   CLOD_KEYCHAIN_PASSWORD  the login keychain's password (default: admin, the Cirrus image's)
#   CLOD_DERIVED_DATA       Xcode DerivedData location relative to each project (default DerivedData)
set -euo pipefail

CLOD_SCRIPT_DIR=$(cd "$(dirname "$0")" && pwd)
if [ -f "$CLOD_SCRIPT_DIR/lib.sh" ]; then
    # shellcheck source=../common/lib.sh
    . "$CLOD_SCRIPT_DIR/lib.sh"
else
    # shellcheck source=../common/lib.sh
    . "$CLOD_SCRIPT_DIR/../common/lib.sh"
fi

KEYCHAIN="$HOME/Library/Keychains/login.keychain-db"
KEYCHAIN_PASSWORD=${CLOD_KEYCHAIN_PASSWORD:-admin}
DERIVED_DATA=${CLOD_DERIVED_DATA:-DerivedData}

configure_home() {
    bash "$(find_sibling configure-home.sh)"
}

# Tools that store secrets (git credential helpers, gh, Claude Code on macOS) prompt or fail when
# the login keychain is missing or locked; over SSH there is nobody to answer the prompt.
ensure_login_keychain() {
    if [ ! -f "$KEYCHAIN" ]; then
        # `create-keychain login.keychain` writes ~/Library/Keychains/login.keychain-db.
        security create-keychain -p "$KEYCHAIN_PASSWORD" login.keychain
        security login-keychain -d user -s "$KEYCHAIN"
        security default-keychain -d user -s "$KEYCHAIN"
        security list-keychains -d user -s "$KEYCHAIN"
        info "created $KEYCHAIN"
    fi
    if ! security unlock-keychain -p "$KEYCHAIN_PASSWORD" "$KEYCHAIN"; then
        die "cannot unlock $KEYCHAIN" "set CLOD_KEYCHAIN_PASSWORD to the guest user's password"
    fi
}

keep_keychain_unlocked() {
    # `set-keychain-settings` without -t/-l means: no idle timeout, no lock on sleep.
    local settings
    settings=$(security show-keychain-info "$KEYCHAIN" 2>&1 || true)
    case "$settings" in
        *lock-on-sleep* | *timeout=*) ;;
        *no-timeout*) info "auto-lock already off"; return 0 ;;
    esac
    security set-keychain-settings "$KEYCHAIN"
    info "auto-lock off for $KEYCHAIN"
}

# Xcode's Derived Data location (Settings > Locations > Derived Data) is the user default
# IDECustomDerivedDataLocation. An absolute value is one folder shared by every project; a
# RELATIVE value ("Relative" in the Settings UI) is resolved against the folder holding each
# .xcodeproj/.xcworkspace, and xcodebuild honours it too. Parallel git worktrees of one project
# live in different folders, so each gets its own DerivedData and their builds, indexes and
# module caches never collide. ~/.config/git/ignore keeps DerivedData/ out of commits.
place_derived_data_in_projects() {
    case "$DERIVED_DATA" in
        '' | /*) die "CLOD_DERIVED_DATA must be a relative path, not '$DERIVED_DATA'" ;;
    esac
    local current
    current=$(defaults read com.apple.dt.Xcode IDECustomDerivedDataLocation 2>/dev/null || true)
    if [ "$current" = "$DERIVED_DATA" ]; then
        info "DerivedData already inside each project ($DERIVED_DATA)"
        return 0
    fi
    defaults write com.apple.dt.Xcode IDECustomDerivedDataLocation -string "$DERIVED_DATA"
    info "Xcode DerivedData: <project folder>/$DERIVED_DATA"
}

step "configure home" configure_home
step "unlock the login keychain" ensure_login_keychain
step "keep the login keychain unlocked" keep_keychain_unlocked
step "put Xcode DerivedData inside each project" place_derived_data_in_projects
log "==> macOS configure done"
