# shellcheck shell=sh disable=SC2154  # $here and $entry are set by the bin/ script that sources this
# Sourced by every bin/ script after it sets $here (its own resolved directory)
# and $entry (module:function). Finds the checkout, makes sure the venv exists
# (bootstrapping it on first use), and runs the entry point with the venv's
# Python in isolated mode, so the user's PYTHONPATH or site-packages cannot
# change what clod runs.
root=${here%/bin}
python=$root/.venv/bin/python
if [ ! -x "$python" ] || [ ! -e "$root/.venv/.stamp" ] || [ "$root/requirements.txt" -nt "$root/.venv/.stamp" ]; then
    python3 "$root/lib/bootstrap-venv" "$root" || exit 1
fi
exec "$python" -I -c "from ${entry%%:*} import ${entry##*:} as main; main()" "$@"
