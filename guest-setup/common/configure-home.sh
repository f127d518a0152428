#!/usr/bin/env bash
# configure-home.sh: install clod's guest home for the guest user (dst build, both guest OSes).
#
# Runs in the guest as the guest user. The host first copies the merged home tree (clod's
# guest-setup/home/, then guest-setup/user/, then ~/.config/clod/home/ on the host) to the
# staging directory, replacing any earlier staging copy, and runs this script with:
#   CLOD_HOME_STAGING  staged home (default ~/.cache/clod-home-staging)
#   CLOD_GIT_NAME      git user.name  (from the host's git config; empty: left alone)
#   CLOD_GIT_EMAIL     git user.email (likewise)
#   CLOD_SHARES_ROOT   where mapped projects appear (default: macOS "/Volumes/My Shared Files",
#                      Linux /mnt/clod)
# Idempotent: a second run with the same staging changes nothing. Only files that differ are
# written; ~/.claude.json and ~/.claude/settings.json are merged, never replaced.
set -euo pipefail

CLOD_SCRIPT_DIR=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$CLOD_SCRIPT_DIR/lib.sh"

STAGING=${CLOD_HOME_STAGING:-$HOME/.cache/clod-home-staging}
SHARES_ROOT=$(default_shares_root)
CLAUDE_DEFAULTS=.config/clod/claude

check_staging() {
    [ -d "$STAGING" ] || die "no staged home at $STAGING" \
        "the host copies the merged home tree there before running configure-home.sh"
    if [ -z "$HOME" ] || [ ! -d "$HOME" ]; then
        die "HOME ($HOME) is not a directory"
    fi
    case "$STAGING" in
        "$HOME" | "$HOME/") die "the staging directory cannot be HOME itself" ;;
    esac
}

# Files merged instead of being copied: the Claude Code config (merge_claude_config) and
# authorized_keys, where a user's own file must not drop the key the host logs in with.
is_merged_file() {
    case "$1" in
        .claude.json | .claude/settings.json | .ssh/authorized_keys) return 0 ;;
        *) return 1 ;;
    esac
}

install_entry() {
    local rel=$1
    local src="$STAGING/$rel" dest="$HOME/$rel"
    if [ -L "$src" ]; then
        local target
        target=$(readlink "$src")
        if [ -L "$dest" ] && [ "$(readlink "$dest")" = "$target" ]; then
            return 0
        fi
        [ -d "$dest" ] && [ ! -L "$dest" ] && die "$dest is a directory; the staged home has a symlink there"
        rm -f "$dest"
        ln -s "$target" "$dest"
        info "linked ~/$rel"
    elif [ -d "$src" ]; then
        if [ -e "$dest" ] && [ ! -d "$dest" ]; then
            die "$dest is in the way of the staged directory ~/$rel" "move it away and rerun"
        fi
        mkdir -p "$dest"
    elif [ -f "$src" ]; then
        is_merged_file "$rel" && return 0
        if [ -d "$dest" ] && [ ! -L "$dest" ]; then
            die "$dest is a directory; the staged home has a file there" "move it away and rerun"
        fi
        if [ -f "$dest" ] && [ ! -L "$dest" ] && cmp -s "$src" "$dest"; then
            # Same content: only make sure the executable bit matches.
            if [ -x "$src" ] && [ ! -x "$dest" ]; then
                chmod +x "$dest"
            elif [ ! -x "$src" ] && [ -x "$dest" ]; then
                chmod -x "$dest"
            fi
            return 0
        fi
        # Write next to the destination and rename, so a crash never leaves half a dotfile.
        local tmp="$dest.clod-tmp.$$"
        cp -p "$src" "$tmp"
        [ -L "$dest" ] && rm -f "$dest"
        mv -f "$tmp" "$dest"
        info "installed ~/$rel"
    fi
}

install_home_files() {
    # find prints parents before children, so directories exist before their files.
    (cd "$STAGING" && find . -mindepth 1 -print0) | while IFS= read -r -d '' rel; do
        install_entry "${rel#./}"
    done
}

# merge_json TARGET FRAGMENT...: deep-merge the fragments (later wins; objects merge, other values
# replace) into TARGET's existing content. Keys only TARGET has (a login, projects) are kept.
merge_json() {
    python3 - "$@" <<'PY'
import json, os, sys, tempfile

target, fragments = sys.argv[1], sys.argv[2:]

def load(path):
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        sys.exit(f"error: {path} does not hold a JSON object")
    return data

def merge(into, update):
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = value

try:
    current = load(target) if os.path.exists(target) else {}
except (OSError, ValueError) as e:
    sys.exit(f"error: cannot read {target} ({e}); fix or remove it and rerun")
merged = json.loads(json.dumps(current))
for path in fragments:
    try:
        merge(merged, load(path))
    except (OSError, ValueError) as e:
        sys.exit(f"error: cannot read {path} ({e})")
if merged == current and os.path.exists(target):
    sys.exit(0)
directory = os.path.dirname(target)
os.makedirs(directory, exist_ok=True)
fd, tmp = tempfile.mkstemp(dir=directory, prefix=".clod-merge.")
with os.fdopen(fd, "w", encoding="utf-8") as f:
    json.dump(merged, f, indent=2, ensure_ascii=False)
    f.write("\n")
    f.flush()
    os.fsync(f.fileno())
os.chmod(tmp, 0o600)
os.replace(tmp, target)
print(f"    merged {target}", file=sys.stderr)
PY
}

merge_claude_config() {
    command -v python3 >/dev/null 2>&1 || die "python3 is needed to merge the Claude Code config"
    # clod's defaults first, then the user's own file from the staged home (it wins).
    merge_claude_file .claude.json "$CLAUDE_DEFAULTS/claude.json" .claude.json
    merge_claude_file .claude/settings.json "$CLAUDE_DEFAULTS/settings.json" .claude/settings.json
}

# merge_claude_file TARGET STAGED_FRAGMENT...: merge the staged fragments that exist into ~/TARGET.
merge_claude_file() {
    local target=$1 fragment found=""
    shift
    for fragment in "$@"; do
        if [ -f "$STAGING/$fragment" ]; then
            found="$found $fragment"
        fi
    done
    if [ -z "$found" ]; then
        warn "nothing to merge into ~/$target (no fragments in the staged home)"
        return 0
    fi
    set --
    for fragment in $found; do
        set -- "$@" "$STAGING/$fragment"
    done
    merge_json "$HOME/$target" "$@"
}

merge_authorized_keys() {
    local src="$STAGING/.ssh/authorized_keys" dest="$HOME/.ssh/authorized_keys" key
    [ -f "$src" ] || return 0
    mkdir -p "$HOME/.ssh"
    if [ ! -f "$dest" ]; then : >"$dest"; fi
    while IFS= read -r key || [ -n "$key" ]; do
        case "$key" in '' | '#'*) continue ;; esac
        if grep -qxF -- "$key" "$dest"; then
            continue
        fi
        if [ -s "$dest" ] && [ -n "$(tail -c 1 "$dest")" ]; then
            printf '\n' >>"$dest"
        fi
        printf '%s\n' "$key" >>"$dest"
        info "added a key to ~/.ssh/authorized_keys"
    done <"$src"
}

set_git_config() {
    local key=$1 value=$2
    if [ -z "$value" ]; then
        info "$key: no value from the host; left alone"
        return 0
    fi
    if [ "$(git config --global --get "$key" || true)" = "$value" ]; then
        return 0
    fi
    git config --global "$key" "$value"
    info "$key set"
}

set_git_identity() {
    command -v git >/dev/null 2>&1 || die "git is not installed in the guest"
    set_git_config user.name "${CLOD_GIT_NAME:-}"
    set_git_config user.email "${CLOD_GIT_EMAIL:-}"
}

# Mapped projects may be owned by another uid than the guest user (virtio-fs passes the host's
# owner through), which git rejects as "dubious ownership". Which entry works depends on git:
#   - git >= 2.46 (Homebrew git on macOS) accepts "<dir>/*" and matches every repository below
#     <dir>, with the path resolved to its physical form; "~/projects/*" would resolve to the
#     real ~/projects directory and never match, so the entry names the share root.
#   - older git (Debian 12: 2.39; Apple's /usr/bin/git) compares exact physical paths only and
#     would take "<dir>/*" literally (a harmless no-op). For it the session setup
#     (~/.config/clod/session.zsh) adds "<share root>/<name>" for each mapped project as it
#     appears; that covers a repository at the project root. Nested repositories then need
#     git >= 2.46 or their own entry.
#   - "*" (trust everything) would also work everywhere but turns the check off for all paths.
trust_shares() {
    local entry="$SHARES_ROOT/*"
    if git config --global --get-all safe.directory 2>/dev/null | grep -qxF -- "$entry"; then
        return 0
    fi
    git config --global --add safe.directory "$entry"
    info "safe.directory += $entry"
}

fix_permissions() {
    local f
    if [ -d "$HOME/.ssh" ]; then
        chmod 700 "$HOME/.ssh"
        for f in "$HOME/.ssh/authorized_keys" "$HOME/.ssh/config" "$HOME/.ssh/"id_*; do
            case "$f" in
                *.pub) continue ;;
            esac
            if [ -f "$f" ]; then chmod 600 "$f"; fi
        done
    fi
    if [ -d "$HOME/.claude" ]; then chmod 700 "$HOME/.claude"; fi
    if [ -f "$HOME/.claude.json" ]; then chmod 600 "$HOME/.claude.json"; fi
    if [ -d "$HOME/bin" ]; then
        for f in "$HOME/bin/"*; do
            if [ -f "$f" ] && [ -f "$STAGING/bin/${f##*/}" ] && [ ! -x "$f" ]; then chmod 755 "$f"; fi
        done
    fi
}

step "check staged home" check_staging
step "install home files" install_home_files
step "merge Claude Code config" merge_claude_config
step "merge authorized keys" merge_authorized_keys
step "set git identity" set_git_identity
step "trust mapped projects in git" trust_shares
step "fix permissions" fix_permissions
log "==> home configured from $STAGING"
