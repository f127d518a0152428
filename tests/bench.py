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
    subprocess.run([str(BIN / "clod-remove"), str(project)], env=env, capture_output=True, check=True)
    shutil.rmtree(project)


def qemu(env):
    """Base build, dst rebuild, boot-to-SSH, attach, and a plain boot, through
    the same commands a user runs."""
    if shutil.which("qemu-system-x86_64") is None or shutil.which("mmdebstrap") is None:
        print("QEMU figures: skipped (qemu-system-x86 and mmdebstrap are not installed)")
        return
    env = dict(env, CLOD_BACKEND="qemu")
    project = Path(tempfile.mkdtemp(prefix="bench-project-"))
    make = ["make", "-s", "--no-print-directory", "-C", str(ROOT)]
    print("QEMU driver (guest: Debian; each figure is one run unless noted)")

    def once(argv) -> float:
        start = time.perf_counter()
        done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            sys.exit(f"bench: {' '.join(map(str, argv))} failed:\n{done.stderr}")
        return time.perf_counter() - start

    subprocess.run([str(BIN / "clod"), "stop"], env=env, capture_output=True)
    stamp = Path(env["CLOD_STATE_DIR"]) / "stamps" / "qemu-base.json"
    if stamp.exists():
        import json

        row("base build (from its stamp: already built)", json.loads(stamp.read_text()).get("seconds", float("nan")), "s")
    else:
        row("base build (make base: mmdebstrap + npm)", once([*make, "base"]), "s")
    once([*make, "rebuild-dst"])
    row("dst rebuild (make rebuild-dst dst)", once([*make, "dst"]), "s")
    run_true = [str(BIN / "clod"), "run", "--project", str(project), "--", "true"]
    row("first start (clod run -- true; KVM probe if new)", once(run_true), "s")
    once([str(BIN / "clod"), "stop"])
    row("boot to SSH + first command (clod run -- true)", once(run_true), "s")
    attach = statistics.median(once(run_true) for _ in range(5))
    row("attach to the running VM (clod run -- true, median of 5)", attach, "s")
    once([str(BIN / "clod"), "stop"])
    sys.path.insert(0, str(ROOT / "lib"))
    os.environ.update(env)
    from clod import ssh
    from clod.qemu import QemuDriver

    driver = QemuDriver()
    start = time.perf_counter()
    driver.run(driver.dst_name, [(project.name, str(project))], plain_boot=True)
    endpoint = ssh.Endpoint(vm=driver.dst_name, **driver.ssh_endpoint(driver.dst_name))
    ssh.wait_for_sshd(endpoint, timeout=300)
    row("plain boot to SSH (systemd, stock command line)", time.perf_counter() - start, "s")
    driver.stop(driver.dst_name, timeout=5)
    subprocess.run([str(BIN / "clod-remove"), str(project)], env=env, capture_output=True, check=True)
    shutil.rmtree(project)


def main():
    state = os.environ.get("BENCH_STATE_DIR") or tempfile.mkdtemp(prefix="clod-bench-state-")
    env = dict(os.environ, CLOD_STATE_DIR=state, NO_COLOR="1")
    startup(env)
    if os.environ.get("BENCH_SKIP_VM"):
        return
    qemu(env)


if __name__ == "__main__":
    main()
