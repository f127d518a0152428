"""Conventions every bin/ script keeps (issue 2 items 2 and 6; STYLE.md): --help,
usage errors, data on stdout and talk on stderr, no tracebacks, the shim works
from anywhere, start-up stays light, the user's Python environment cannot leak in."""

import json
import os
import shutil
import subprocess

import pytest
from conftest import BIN, ROOT, VENV_PYTHON, run_script

SCRIPTS = sorted(p.name for p in BIN.iterdir() if p.is_file() and os.access(p, os.X_OK))
FOUNDATION = ["clod-add", "clod-list", "clod-remove", "project-map", "resource-calc"]


def test_foundation_scripts_exist():
    assert set(FOUNDATION) <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_exits_0_and_prints_usage(clod, script):
    code, out, err = clod(script, "--help")
    assert code == 0, err
    assert "Usage:" in out or "usage:" in out
    assert "Traceback" not in err


@pytest.mark.parametrize("script", SCRIPTS)
def test_unknown_option_is_a_usage_error(clod, script):
    code, out, err = clod(script, "--no-such-option")
    assert code == 2
    assert out == ""
    assert "Usage" in err or "usage" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("script", ["clod-remove", "project-map"])
def test_missing_argument_is_a_usage_error(clod, script):
    code, out, err = clod(script)
    assert code == 2 and out == "" and "Usage" in err


def test_stdout_is_data_only(clod, ct):
    (ct / "app").mkdir()
    for flag in ([], ["-v"], ["--debug"]):
        clod("clod-remove", "app")
        code, out, err = clod("clod-add", *flag, ct / "app")
        assert (code, out) == (0, "app\n")
        assert "mapped" in err
    code, out, _ = clod("clod-add", ct / "app")
    assert out == "app\n"
    code, out, _ = clod("clod-remove", "-v", "app")
    assert (code, out) == (0, "app\n")


@pytest.mark.parametrize(
    "argv",
    [
        ["clod-add", "/no/such/dir"],
        ["clod-add", "/"],
        ["clod-remove", "nothing-mapped"],
        ["project-map", "active"],
        ["project-map", "add", "/etc/hostname"],
    ],
)
def test_user_errors_exit_1_without_traceback_or_stdout(clod, argv):
    code, out, err = clod(*argv)
    assert code == 1
    assert out == ""
    assert "Traceback" not in err
    assert err.startswith(f"{argv[0]}: ")
    assert "\nhint: " in err


def test_quiet_silences_info_but_not_errors(clod, ct):
    (ct / "app").mkdir()
    assert clod("clod-add", "-q", ct / "app", check=True).stderr == ""
    code, _, err = clod("clod-add", "-q", ct / "missing")
    assert code == 1 and "no such directory" in err


def test_debug_shows_the_traceback_of_a_user_error(clod):
    code, _, err = clod("clod-add", "--debug", "/no/such/dir")
    assert code == 1 and "Traceback" in err


def test_no_color_escapes(clod):
    code, _, err = clod("clod-add", "/no/such/dir")
    assert "\033[" not in err


def test_absolute_path_from_another_cwd(ct, isolated_env):
    (ct / "app").mkdir()
    done = subprocess.run([str(BIN / "clod-add"), "."], cwd=ct / "app", env=isolated_env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "app\n"


def test_through_symlinks_on_path(ct, tmp_path, isolated_env):
    (ct / "app").mkdir()
    onpath = tmp_path / "somebin"
    onpath.mkdir()
    (onpath / "clod-add").symlink_to(BIN / "clod-add")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "ca").symlink_to(onpath / "clod-add")  # a symlink to a symlink, relative to PATH
    (onpath / "ca").symlink_to("../other/ca")
    env = {**isolated_env, "PATH": f"{onpath}{os.pathsep}{isolated_env['PATH']}"}
    for command in ("clod-add", "ca"):
        done = subprocess.run([command, "."], cwd=ct / "app", env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert done.stdout == "app\n"


def test_checkout_in_a_path_with_spaces(ct, tmp_path, isolated_env):
    """The shim quotes its paths: a checkout at ~/My Stuff/clod works."""
    checkout = tmp_path / "My Stuff" / "it's clod"
    checkout.mkdir(parents=True)
    for part in ("bin", "lib"):
        shutil.copytree(ROOT / part, checkout / part, ignore=shutil.ignore_patterns("__pycache__"))
    for part in (".venv", "requirements.txt", "requirements-dev.txt"):
        (checkout / part).symlink_to(ROOT / part)
    (ct / "app").mkdir()
    result = run_script(isolated_env, str(checkout / "bin" / "clod-add"), ct / "app", check=True)
    assert result.stdout == "app\n"


# ---------------------------------------------------------------- start-up stays light

MODULES_AFTER = """
import json, sys
sys.argv = [sys.argv[1]] + sys.argv[2:]
from clod.commands import front, project_map
entry = {"clod-list": front.list_main, "clod-add": front.add_main, "project-map": project_map.main}[sys.argv[0]]
try:
    entry()
except SystemExit:
    pass
sys.stdout.flush()
sys.stderr.write("\\nMODULES " + json.dumps(sorted(sys.modules)) + "\\n")
"""


def loaded_modules(isolated_env, *argv, cwd=None) -> set[str]:
    done = subprocess.run([str(VENV_PYTHON), "-I", "-c", MODULES_AFTER, *argv], env=isolated_env, capture_output=True, text=True, cwd=cwd)
    line = done.stderr.rpartition("MODULES ")[2]
    return set(json.loads(line))


@pytest.mark.parametrize(
    "argv",
    [["clod-list"], ["clod-list", "--json"], ["project-map", "list"], ["project-map", "dirs"], ["project-map", "add", "."]],
)
def test_project_map_does_not_import_heavy_modules(isolated_env, ct, argv):
    (ct / "app").mkdir()
    modules = loaded_modules(isolated_env, *argv, cwd=ct / "app")
    assert "clod.projects" in modules  # it did run
    for heavy in ("requests", "sh", "urllib3", "http.client", "ssl"):
        assert heavy not in modules, f"{' '.join(argv)} imports {heavy}"


def test_readers_do_not_import_filelock(isolated_env):
    assert "filelock" not in loaded_modules(isolated_env, "clod-list", "--json")


# ---------------------------------------------------------------- the user's Python environment


@pytest.fixture
def hostile_pythonpath(tmp_path):
    """A PYTHONPATH full of modules that break on import."""
    poison = tmp_path / "poison"
    (poison / "clod").mkdir(parents=True)
    boom = "raise SystemExit('poisoned import: the user PYTHONPATH leaked into clod')\n"
    for module in ("docopt.py", "filelock.py", "json.py", "sitecustomize.py", "usercustomize.py", "clod/__init__.py"):
        (poison / module).write_text(boom)
    return poison


@pytest.mark.parametrize("argv", [["clod-list", "--json"], ["resource-calc"], ["project-map", "dirs"]])
def test_user_pythonpath_cannot_break_scripts(clod, hostile_pythonpath, argv):
    env = {"PYTHONPATH": str(hostile_pythonpath), "PYTHONSTARTUP": str(hostile_pythonpath / "json.py"), "PYTHONSAFEPATH": ""}
    code, out, err = clod(*argv, env=env)
    assert code == 0, err
    assert "poisoned" not in err


def test_user_pythonpath_cannot_break_add(clod, hostile_pythonpath, ct):
    (ct / "app").mkdir()
    code, out, err = clod("clod-add", ct / "app", env={"PYTHONPATH": str(hostile_pythonpath)})
    assert (code, out) == (0, "app\n"), err


def test_cwd_with_a_clod_package_does_not_shadow(clod, hostile_pythonpath):
    code, _, err = clod("clod-list", cwd=hostile_pythonpath)
    assert code == 0, err


# ---------------------------------------------------------------- pipes and signals


def test_closed_stdout_is_not_an_error(ct, isolated_env):
    """`clod-list --json | head -0`: the reader is gone before we write."""
    for i in range(3):
        (ct / f"p{i}").mkdir()
        run_script(isolated_env, "clod-add", ct / f"p{i}", check=True)
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([str(BIN / "clod-list"), "--json"], env=isolated_env, stdout=write_end, stderr=subprocess.PIPE, text=True)
    finally:
        os.close(write_end)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
