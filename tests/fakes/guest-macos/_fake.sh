# shellcheck shell=bash
# Shared by the fake macOS tools in this directory. Each fake:
#   - appends one line to $FAKE_LOG: its name and arguments separated by US (0x1f);
#   - fails when "NAME ARGS..." matches the glob in $FAKE_FAIL (exit $FAKE_FAIL_STATUS, default 1);
#   - keeps its state under $FAKE_STATE so a second run can observe the first.
FAKE_NAME=${0##*/}
: "${FAKE_STATE:?FAKE_STATE must be set}"
mkdir -p "$FAKE_STATE"

fake_log() {
    local line=$FAKE_NAME arg
    for arg in "$@"; do
        line="$line"$'\x1f'"$arg"
    done
    if [ -n "${FAKE_LOG:-}" ]; then
        printf '%s\n' "$line" >>"$FAKE_LOG"
    fi
}

fake_maybe_fail() {
    if [ -n "${FAKE_FAIL:-}" ]; then
        # shellcheck disable=SC2053 # FAKE_FAIL is a glob on purpose
        if [[ "$FAKE_NAME $*" == $FAKE_FAIL ]]; then
            echo "$FAKE_NAME: injected failure ($FAKE_FAIL)" >&2
            exit "${FAKE_FAIL_STATUS:-1}"
        fi
    fi
}

fake_log "$@"
fake_maybe_fail "$@"
