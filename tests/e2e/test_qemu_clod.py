"""clod on a Linux host, as a user runs it: `make run` boots a real Debian VM
with QEMU and runs commands in the mapped project.

The tests run in order and share one state dir (tests/e2e/conftest.py): the
first run boots the VM, later ones reuse it, restart it or rebuild dst, as a
user's day would.
"""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
pytest_plugins = ["qemu_host"]

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / "bin"
DST = "clodpod-debian"


@pytest.fixture(scope="module")
def repo(tmp_path_factory, qemu_env) -> Path:
    """A copy of this repository (its committed files), as a git repository."""
    copy = tmp_path_factory.mktemp("projects") / "clod copy"
    copy.mkdir()
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, files):
        source = ROOT / os.fsdecode(name)
        if source.is_file():
            target = copy / os.fsdecode(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    git = ["git", "-C", str(copy), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True, env=qemu_env)
    subprocess.run([*git, "add", "-A"], check=True, env=qemu_env)
    subprocess.run([*git, "commit", "-qm", "copy"], check=True, env=qemu_env)
    return copy


def make_run(env, project, args, cwd=None):
    return subprocess.run(
        ["make", "-s", "-C", str(ROOT), "run", f"PROJECT={project}", f"ARGS={args}"],
        env=env, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL, cwd=cwd,
    )  # fmt: skip


def clod(env, *argv, cwd=None):
    return subprocess.run([str(BIN / "clod"), *argv], env=env, capture_output=True, text=True, timeout=900,
                          stdin=subprocess.DEVNULL, cwd=cwd)  # fmt: skip


def run_json(env) -> dict:
    return json.loads((Path(env["CLOD_STATE_DIR"]) / "qemu" / "vms" / DST / "run.json").read_text())


def test_make_run_prints_claude_codes_version_from_the_vm(qemu_env, repo):
    result = make_run(qemu_env, repo, "-- claude --version")
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"\d+\.\d+\.\d+ \(Claude Code\)\n", result.stdout), result.stdout
    assert "starting clodpod-debian" in result.stderr


def test_the_guest_home_is_configured_like_on_macos(qemu_env, repo):
    """configure-home.sh ran in the guest: Claude Code starts without its
    onboarding and bypass prompts, and git has the host's identity."""
    script = "python3 -c 'import json,os; print(json.load(open(os.path.expanduser(\"~/.claude.json\")))[\"hasCompletedOnboarding\"])'" \
        " && git config --global user.name && command -v claude"
    result = clod(qemu_env, "run", "--project", str(repo), "--", "sh", "-c", script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["True", "E2E Tester", "/home/clod/bin/claude"]


def test_files_cross_both_ways_with_the_host_users_ownership(qemu_env, repo):
    (repo / "from-host.txt").write_text("written on the host\n")
    script = "cat from-host.txt && echo 'written in the guest' > from-guest.txt && echo more >> from-host.txt && id -un"
    result = clod(qemu_env, "run", "--project", str(repo), "--", "sh", "-c", script)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "written on the host\nclod\n"
    created = repo / "from-guest.txt"
    assert created.read_text() == "written in the guest\n"
    assert (created.stat().st_uid, created.stat().st_gid) == (os.getuid(), os.getgid())
    assert (repo / "from-host.txt").read_text() == "written on the host\nmore\n"


def test_git_works_on_the_mapped_repository_and_exit_status_passes_through(qemu_env, repo):
    (repo / "README.md").write_text("changed\n")
    result = clod(qemu_env, "run", "--project", str(repo), "--", "git", "status", "--short")
    assert result.returncode == 0, result.stderr
    assert " M README.md" in result.stdout
    assert clod(qemu_env, "run", "--project", str(repo), "--", "sh", "-c", "exit 3").returncode == 3


def test_the_session_starts_in_the_same_subdirectory(qemu_env, repo):
    result = clod(qemu_env, "run", "--", "pwd", cwd=repo / "lib" / "clod")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"/home/clod/projects/{repo.name}/lib/clod\n"


def test_a_second_run_reuses_the_running_vm_and_dst(qemu_env, repo):
    started = run_json(qemu_env)["started"]
    result = make_run(qemu_env, repo, "-- true")
    assert result.returncode == 0, result.stderr
    assert "building" not in result.stderr and "starting" not in result.stderr, result.stderr
    assert run_json(qemu_env)["started"] == started


def test_two_projects_are_both_visible_after_a_restart(qemu_env, repo, tmp_path):
    other = tmp_path / "other project"
    other.mkdir()
    (other / "marker").write_text("other\n")
    assert clod(qemu_env, "add", str(other)).returncode == 0
    # Without a terminal clod does not restart a running VM to add a share: it says so.
    kept = clod(qemu_env, "run", "--project", str(repo), "--", "true")
    assert kept.returncode == 0 and "clod stop" in kept.stderr, kept.stderr
    assert clod(qemu_env, "stop").returncode == 0
    both = clod(qemu_env, "run", "--project", str(repo), "--", "sh", "-c", "ls ~/projects && cat ~/projects/'other project'/marker")
    assert both.returncode == 0, both.stderr
    assert both.stdout.splitlines() == [repo.name, "other project", "other"]
    assert clod(qemu_env, "remove", str(other)).returncode == 0


def test_changing_a_home_file_rebuilds_only_dst(qemu_env, repo):
    user_home = Path(qemu_env["XDG_CONFIG_HOME"]) / "clod" / "home"
    user_home.mkdir(parents=True, exist_ok=True)
    (user_home / ".clod-e2e-rc").write_text("from the user's own config\n")
    # The VM runs: without a terminal to say yes, clod keeps it and says how to apply the change.
    kept = make_run(qemu_env, repo, "-- true")
    assert kept.returncode == 0 and "your changes apply after: clod stop" in kept.stderr, kept.stderr
    assert clod(qemu_env, "stop").returncode == 0
    result = make_run(qemu_env, repo, "-- cat /home/clod/.clod-e2e-rc")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "from the user's own config\n"
    assert "destination image clodpod-debian ready" in result.stderr
    assert "base image" not in result.stderr and "mmdebstrap" not in result.stderr


def test_stop_leaves_the_vm_stopped_and_is_idempotent(qemu_env):
    assert clod(qemu_env, "stop").returncode == 0
    listed = subprocess.run([str(BIN / "qemu-wrap"), "list"], env=qemu_env, capture_output=True, text=True, check=True)
    states = {vm["Name"]: vm["State"] for vm in json.loads(listed.stdout)}
    assert states[DST] == "stopped"
    again = clod(qemu_env, "stop")
    assert again.returncode == 0 and "no clod VM is running" in again.stderr
