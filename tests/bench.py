"""`make bench`: where clod's time goes, measured on this host.

Start-up of the light scripts beside a bare Python, then (for the QEMU driver,
where it can run) base build, dst rebuild, boot-to-SSH, attach, and a plain
systemd boot of the same image for comparison. Figures are printed, never
asserted. Uses a throwaway CLOD_STATE_DIR unless BENCH_STATE_DIR is set (set
it to reuse built images between runs).
"""

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / "bin"
RUNS = int(os.environ.get("BENCH_RUNS", "15"))


def timed(argv, env, runs=RUNS) -> float:
    """Median wall time of argv in ms."""
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def row(label, value, unit="ms", note=""):
    print(f"  {label:<44} {value:>9.1f} {unit}  {note}")


def startup(env):
    print(f"start-up (median of {RUNS} runs)")
    project = Path(tempfile.mkdtemp(prefix="bench-project-"))
    # The interpreter itself, not a version-manager shim (pyenv's takes ~100 ms).
    python3 = os.path.realpath(ROOT / ".venv" / "bin" / "python")
    bare = timed([python3, "-c", "pass"], env)
    row(f"python3 -c pass  ({python3})", bare)
    for label, argv in (
        ("bin/clod-list", [str(BIN / "clod-list")]),
        ("bin/clod-list --json", [str(BIN / "clod-list"), "--json"]),
        ("bin/clod-add DIR (already mapped)", [str(BIN / "clod-add"), str(project)]),
    ):
        took = timed(argv, env)
        row(label, took, note=f"{took / bare:.1f}x python3 -c pass")
    shutil.rmtree(project)


def qemu(env):
    sys.path.insert(0, str(ROOT / "lib"))
    try:
        from clod.qemu import bench as qemu_bench
    except ImportError as err:
        print(f"QEMU figures: skipped ({err})")
        return
    qemu_bench.run(env, row)


def main():
    state = os.environ.get("BENCH_STATE_DIR") or tempfile.mkdtemp(prefix="clod-bench-state-")
    env = dict(os.environ, CLOD_STATE_DIR=state, NO_COLOR="1")
    startup(env)
    if os.environ.get("BENCH_SKIP_VM"):
        return
    qemu(env)


if __name__ == "__main__":
    main()
