"""The crash-safe, file-locked state store (issue 2 item 3; case B12)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from clod import paths, projects, store
from clod.errors import ClodError
from conftest import BIN, projects_file

HOLD_LOCK = """
import sys, time
from clod import store
with store.locked("projects"):
    print("held", flush=True)
    time.sleep(60)
"""


def hold_lock(python_env: dict) -> subprocess.Popen:
    """A child Python holding the projects lock; returns once it holds it."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK], env=python_env, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
    )
    assert holder.stdout.readline() == "held\n"
    return holder


def test_50_parallel_adds_lose_nothing(ct, isolated_env, state_dir):
    dirs = []
    for i in range(50):
        (ct / f"p{i}").mkdir()
        dirs.append(ct / f"p{i}")
    children = [
        subprocess.Popen([BIN / "clod-add", "-q", d], env=isolated_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        for d in dirs
    ]
    for child in children:
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
    data = json.loads(projects_file(state_dir).read_text())
    assert data["schema"] == projects.SCHEMA
    assert sorted(p["path"] for p in data["projects"]) == sorted(map(str, dirs))
    assert len({p["name"] for p in data["projects"]}) == 50
    # No temp files are left behind.
    assert sorted(os.listdir(state_dir)) == ["locks", "projects.json"]


def test_readers_never_see_a_partial_file(ct, isolated_env, state_dir, python_env):
    """A reader loops over projects.json while writers rewrite it: every read parses."""
    for i in range(10):
        (ct / f"p{i}").mkdir()
    projects.add(str(ct / "p0"))
    rewrite = "import sys\nfrom clod import projects\nfor i in range(300):\n    projects.add(sys.argv[1] + f'/p{i % 10}')\n"
    writer = subprocess.Popen([sys.executable, "-c", rewrite, str(ct)], env=python_env)
    reads = 0
    path = projects_file(state_dir)
    while writer.poll() is None:
        text = path.read_text()
        data = json.loads(text)  # raises on a partial file
        assert data["schema"] == 1 and data["projects"]
        reads += 1
    assert writer.returncode == 0
    assert reads > 10


def test_b12_killed_holder_never_blocks(ct, clod, python_env):
    holder = hold_lock(python_env)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    holder.stdout.close()
    (ct / "x").mkdir()
    start = time.monotonic()
    clod("clod-add", ct / "x", env={"CLOD_LOCK_TIMEOUT": "5"}, check=True)
    assert time.monotonic() - start < 5  # it did not wait out the timeout
    assert clod("clod-list", "--json", check=True).stdout.count('"name"') == 1


def test_b12_live_holder_waits_then_names_its_pid_and_readers_still_work(ct, clod, python_env, state_dir):
    (ct / "a").mkdir()
    clod("clod-add", ct / "a", check=True)
    before = projects_file(state_dir).read_bytes()
    holder = hold_lock(python_env)
    try:
        (ct / "x").mkdir()
        code, out, err = clod("clod-add", ct / "x", env={"CLOD_LOCK_TIMEOUT": "1"})
        assert code == 1 and out == ""
        assert f"pid {holder.pid}" in err and "Traceback" not in err
        assert projects_file(state_dir).read_bytes() == before

        # Readers take no lock.
        _, out, _ = clod("clod-list", "--json", check=True, timeout=10)
        assert json.loads(out)[0]["name"] == "a"
        clod("project-map", "dirs", check=True, timeout=10)

        # The live holder was not broken.
        assert holder.poll() is None
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()


def test_live_holder_releases_and_waiter_proceeds(ct, clod, python_env):
    holder = hold_lock(python_env)
    (ct / "x").mkdir()
    waiter = subprocess.Popen([BIN / "clod-add", ct / "x"], env={**python_env, "CLOD_LOCK_TIMEOUT": "20"}, stderr=subprocess.PIPE)
    time.sleep(0.3)
    assert waiter.poll() is None  # still waiting for the lock
    holder.kill()
    holder.wait()
    holder.stdout.close()
    _, err = waiter.communicate(timeout=20)
    assert waiter.returncode == 0, err


@pytest.mark.parametrize(
    "content, words",
    [
        (b"{not json", ["not valid JSON"]),
        (b"", ["not valid JSON"]),
        (b'{"schema": 1, "projects": []}\xff', ["UTF-8"]),
        (b'{"projects": []}', ["no schema"]),
        (b"[]", ["no schema"]),
        (b'{"schema": 1}', ["malformed"]),
        (b'{"schema": 1, "projects": [{"name": "x"}]}', ["malformed"]),
    ],
)
def test_corrupt_file_is_a_clear_error_and_untouched(ct, clod, state_dir, content, words):
    state_dir.mkdir(parents=True, exist_ok=True)
    path = projects_file(state_dir)
    path.write_bytes(content)
    (ct / "x").mkdir()
    for argv in (["clod-list"], ["clod-add", ct / "x"], ["clod-remove", "x"], ["project-map", "dirs"]):
        code, out, err = clod(*argv)
        assert code == 1, (argv, err)
        assert out == "" and "Traceback" not in err and "internal error" not in err
        assert str(path) in err and "mv " in err  # names the file and how to recover
        for word in words:
            assert word in err
    assert path.read_bytes() == content


def test_newer_schema_is_a_clear_error(ct, clod, state_dir):
    state_dir.mkdir(parents=True, exist_ok=True)
    path = projects_file(state_dir)
    content = b'{"schema": 99, "projects": []}\n'
    path.write_bytes(content)
    (ct / "x").mkdir()
    for argv in (["clod-list"], ["clod-add", ct / "x"]):
        code, out, err = clod(*argv)
        assert code == 1 and out == ""
        assert "newer clod" in err and "schema 99" in err and str(path) in err
    assert path.read_bytes() == content


def test_unreadable_state_is_a_clear_error(clod, state_dir):
    state_dir.mkdir(parents=True, exist_ok=True)
    projects_file(state_dir).mkdir()  # a directory where the file should be
    code, out, err = clod("clod-list")
    assert code == 1 and "cannot read" in err and "internal error" not in err


def test_state_dir_that_is_a_file(clod, tmp_path):
    (tmp_path / "afile").write_text("")
    code, out, err = clod("clod-list", env={"CLOD_STATE_DIR": str(tmp_path / "afile")})
    assert code == 1 and out == ""
    assert "afile" in err and "CLOD_STATE_DIR" in err and "internal error" not in err


def test_bad_lock_timeout_is_a_clear_error(clod, ct):
    (ct / "x").mkdir()
    code, _, err = clod("clod-add", ct / "x", env={"CLOD_LOCK_TIMEOUT": "soon"})
    assert code == 1 and "CLOD_LOCK_TIMEOUT" in err and "internal error" not in err


def test_state_dir_override_and_tilde(clod, ct, home):
    (ct / "x").mkdir()
    clod("clod-add", ct / "x", env={"CLOD_STATE_DIR": "~/st"}, check=True)
    assert (home / "st" / "projects.json").is_file()


def test_write_is_atomic_and_keeps_schema(state_dir):
    path = paths.state_path("thing.json")
    store.write_json(path, {"schema": 1, "x": "é"})
    assert store.read_json(path, 1) == {"schema": 1, "x": "é"}
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_failed_write_leaves_old_file_and_no_temp(state_dir):
    path = paths.state_path("thing.json")
    store.write_json(path, {"schema": 1, "v": 1})
    with pytest.raises(TypeError):
        store.write_json(path, {"schema": 1, "v": object()})
    assert store.read_json(path, 1) == {"schema": 1, "v": 1}
    assert [p.name for p in path.parent.iterdir()] == ["thing.json"]


def test_interrupt_during_add_leaves_state_intact(ct, state_dir, isolated_env):
    """SIGINT (Ctrl-C) while a writer waits for the lock: exit 130, nothing written."""
    for d in ("a", "b"):
        (ct / d).mkdir()
    projects.add(str(ct / "a"))
    before = projects_file(state_dir).read_bytes()
    with store.locked("projects"):
        child = subprocess.Popen([BIN / "clod-add", ct / "b"], env=isolated_env, stderr=subprocess.PIPE)
        time.sleep(0.5)
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=10)
    assert child.returncode == 130, err
    assert b"Traceback" not in err
    assert projects_file(state_dir).read_bytes() == before


def test_lock_in_process_times_out_with_pid(state_dir, python_env):
    holder = hold_lock(python_env)
    try:
        with pytest.raises(ClodError, match=f"pid {holder.pid}"):
            with store.locked("projects", timeout=0.2):
                pass
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
