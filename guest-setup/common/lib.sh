# shellcheck shell=bash
# Shared helpers for clod's guest scripts. Sourced, never executed.
#
# The host copies this file next to the per-OS scripts; in the repository it lives in
# guest-setup/common/. It must stay bash 3.2 compatible (macOS's /bin/bash): no associative
# arrays, no ${var,,}, no mapfile, and no "${empty_array[@]}" under `set -u`.
#
# Usage in a script:
#     step "set host name" set_host_name
# Every step logs "==> step: NAME" on stderr. A failing command inside a step stops the script
# (set -e) and the EXIT trap names the step: "==> FAILED step: NAME (exit N)".

CLOD_STEP=""

log() { printf '%s\n' "$*" >&2; }
info() { printf '    %s\n' "$*" >&2; }
warn() { printf 'warning: %s\n' "$*" >&2; }

# die MESSAGE [HINT]: one clear error (plus what to do next) and exit 1.
die() {
    printf 'error: %s\n' "$1" >&2
    if [ $# -gt 1 ] && [ -n "$2" ]; then
        printf 'hint: %s\n' "$2" >&2
    fi
    exit 1
}

# step NAME COMMAND [ARGS...]: run one named build step. Not to be called in a condition
# (`if step ...` or `step ... || x`), which would switch errexit off inside the step.
step() {
    CLOD_STEP=$1
    shift
    log "==> step: $CLOD_STEP"
    "$@"
    CLOD_STEP=""
}

_clod_on_exit() {
    _clod_status=$?
    if [ "$_clod_status" -ne 0 ] && [ -n "$CLOD_STEP" ]; then
        log "==> FAILED step: $CLOD_STEP (exit $_clod_status)"
    fi
    exit "$_clod_status"
}
trap _clod_on_exit EXIT

# as_root COMMAND...: sudo that never prompts; a missing sudo rule fails the step instead of
# hanging an unattended build on a password prompt.
as_root() { sudo -n "$@"; }

# is_true VALUE: 1/yes/true/on (any case) are true.
is_true() {
    case "$1" in
        1 | [Yy] | [Yy][Ee][Ss] | [Tt][Rr][Uu][Ee] | [Oo][Nn]) return 0 ;;
        *) return 1 ;;
    esac
}

# default_shares_root: where the host's mapped projects appear in this guest.
default_shares_root() {
    if [ -n "${CLOD_SHARES_ROOT:-}" ]; then
        printf '%s\n' "$CLOD_SHARES_ROOT"
    elif [ "$(uname -s)" = Darwin ]; then
        printf '%s\n' "/Volumes/My Shared Files"
    else
        printf '%s\n' "/mnt/clod"
    fi
}

# find_sibling NAME: a helper script next to the caller (as the host copies them) or in
# ../common (the repository layout).
find_sibling() {
    for _clod_candidate in "$CLOD_SCRIPT_DIR/$1" "$CLOD_SCRIPT_DIR/../common/$1"; do
        if [ -f "$_clod_candidate" ]; then
            printf '%s\n' "$_clod_candidate"
            return 0
        fi
    done
    die "cannot find $1 next to $CLOD_SCRIPT_DIR" "copy guest-setup/common/* next to the scripts"
}
