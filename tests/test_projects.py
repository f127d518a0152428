"""project-map and its front-ends: keys, names, refusals, round trips (issue 2 item 4;
cases B03, B04, B06, B08). Scripts run as subprocesses where the behaviour is the
contract; the library is called in-process where that is enough and faster."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from clod import projects
from clod.errors import ClodError
from conftest import ROOT, projects_file, read_bytes_or_none


def listed(clod) -> list[dict]:
    _, out, _ = clod("clod-list", "--json", check=True)
    return json.loads(out)


# ---------------------------------------------------------------- canonical key (B06)


def test_b06_symlink_trailing_slash_and_dotdot_are_one_entry(clod, ct):
    real = ct / "real"
    real.mkdir()
    (ct / "link").symlink_to(real)
    for spelling in (f"{ct}/link", f"{ct}/real/", f"{ct}/real/../real"):
        clod("clod-add", spelling, check=True)
    rows = listed(clod)
    assert [r["path"] for r in rows] == [str(real)]
    assert rows[0]["name"] == "real" and rows[0]["active"]

    clod("clod-remove", ct / "link", check=True)
    assert listed(clod) == []
    assert real.is_dir()


def test_b06_relative_spelling_from_another_cwd(clod, ct):
    (ct / "a" / "app").mkdir(parents=True)
    (ct / "b").mkdir()
    clod("clod-add", "app", cwd=ct / "a", check=True)
    clod("clod-add", "../a/app/.", cwd=ct / "b", check=True)
    assert [r["path"] for r in listed(clod)] == [str(ct / "a" / "app")]
    clod("clod-remove", "../a/app", cwd=ct / "b", check=True)
    assert listed(clod) == []


def test_b06_escaping_symlink_warns_and_is_not_mapped(clod, ct):
    real = ct / "real"
    real.mkdir()
    (real / "out").symlink_to("/etc/hosts")
    (real / "inside").symlink_to(real / "out")  # resolves outside too, through 'out'
    (real / "fine").symlink_to(".")
    code, out, err = clod("clod-add", real)
    assert code == 0, err
    assert out == "real\n"
    assert "warning" in err and "out -> /etc/hosts" in err
    assert "fine" not in err
    assert [r["path"] for r in listed(clod)] == [str(real)]
    _, dirs, _ = clod("project-map", "dirs", check=True)
    assert "/etc" not in dirs


def test_tilde_spelling_is_expanded(clod, home):
    (home / "src" / "app").mkdir(parents=True)
    clod("clod-add", "~/src/app", check=True)
    assert listed(clod)[0]["path"] == str(home / "src" / "app")
    clod("clod-remove", "~/src/app/", check=True)


# ---------------------------------------------------------------- deleted on the host (B03)


def test_b03_deleted_directory(clod, ct, state_dir):
    gone, app = ct / "gone", ct / "app"
    gone.mkdir()
    app.mkdir()
    (app / "keep.txt").write_text("x")
    clod("clod-add", gone, check=True)
    clod("clod-add", app, check=True)
    gone.rmdir()

    code, out, err = clod("project-map", "dirs")
    assert code != 0 and out == ""
    assert str(gone) in err and "clod remove gone" in err
    assert "Traceback" not in err

    _, table, _ = clod("clod-list", check=True)
    assert "missing" in table and str(gone) in table
    assert [r["exists"] for r in listed(clod)] == [False, True]

    clod("clod-remove", gone, check=True)
    assert [r["name"] for r in listed(clod)] == ["app"]
    assert (app / "keep.txt").read_text() == "x"
    _, out, _ = clod("project-map", "dirs", check=True)
    assert out == f"--dir=app:{app}\n"


def test_b03_remove_deleted_directory_by_name(clod, ct):
    gone, app = ct / "gone", ct / "app"
    gone.mkdir()
    app.mkdir()
    clod("clod-add", gone, check=True)
    clod("clod-add", app, check=True)
    gone.rmdir()
    code, out, _ = clod("clod-remove", "gone")
    assert code == 0 and out == "gone\n"
    assert [r["name"] for r in listed(clod)] == ["app"]
    assert app.is_dir()


def test_remove_never_deletes_files(clod, ct):
    app = ct / "app"
    (app / "sub").mkdir(parents=True)
    (app / "sub" / "f").write_text("data")
    clod("clod-add", app, check=True)
    clod("clod-remove", "app", check=True)
    assert (app / "sub" / "f").read_text() == "data"


def test_remove_unknown_is_an_error_naming_the_mapped_ones(clod, ct):
    (ct / "app").mkdir()
    clod("clod-add", ct / "app", check=True)
    code, out, err = clod("clod-remove", "nope")
    assert code == 1 and out == ""
    assert "'nope'" in err and "app" in err


# ---------------------------------------------------------------- awkward names and paths (B04)


AWKWARD = [
    "My Projects/app one",
    "it's \"quoted\"",
    "café ünïcødé 日本",
    "  spaced  ",
    "tab\there",
    "$HOME `x` *",
    "-leading-dash",
]


@pytest.mark.parametrize("relative", AWKWARD)
def test_b04_paths_round_trip_byte_exact(clod, ct, relative):
    path = ct / relative
    path.mkdir(parents=True)
    raw = os.fsencode(path)
    code, name, err = clod("clod-add", path)
    assert code == 0, err
    name = name.rstrip("\n")

    rows = listed(clod)
    assert os.fsencode(rows[0]["path"]) == raw

    _, out, _ = clod("project-map", "dirs", "-0", binary=True, check=True)
    assert out == b"--dir=" + name.encode() + b":" + raw + b"\0"

    _, table, _ = clod("clod-list", binary=True, check=True)
    assert raw in table

    clod("clod-remove", path, check=True)
    assert listed(clod) == []
    assert path.is_dir()


def test_b04_names_with_spaces_quotes_unicode(clod, ct):
    names = ["app one", "it's", 'say "hi"', "café", "日本語"]
    for i, name in enumerate(names):
        (ct / str(i)).mkdir()
        _, out, _ = clod("clod-add", ct / str(i), name, check=True)
        assert out == name + "\n"
    assert [r["name"] for r in listed(clod)] == names
    for name in names:
        clod("clod-remove", name, check=True)
    assert listed(clod) == []


def test_list_json_pipes_into_json_tool(clod, ct, isolated_env):
    (ct / "a b").mkdir()
    clod("clod-add", ct / "a b", check=True)
    pipeline = f"'{ROOT}/bin/clod-list' --json | '{sys.executable}' -m json.tool"
    done = subprocess.run(["sh", "-c", pipeline], env=isolated_env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)[0]["path"] == str(ct / "a b")


def test_empty_list(clod):
    assert clod("clod-list", "--json", check=True).stdout.strip() == "[]"
    code, out, err = clod("clod-list")
    assert code == 0 and out == "" and "no projects" in err


# ---------------------------------------------------------------- refused (B08)


@pytest.fixture
def refused(clod, state_dir, ct):
    """Assert a path is refused: exit != 0, a message, the state file unchanged."""
    (ct / "already").mkdir()
    clod("clod-add", ct / "already", check=True)
    before = read_bytes_or_none(projects_file(state_dir))

    def check(path, *words):
        code, out, err = clod("clod-add", path)
        assert code != 0, f"{path} was accepted"
        assert out == ""
        assert "Traceback" not in err
        for word in words:
            assert word in err
        assert read_bytes_or_none(projects_file(state_dir)) == before

    return check


def test_b08_refuses_home(refused, home):
    refused(home, "home")
    refused("~", "home")
    refused(f"{home}/", "home")


def test_b08_refuses_root_and_ancestors_of_home(refused, home):
    refused("/")
    refused(home.parent, "home")
    refused(home.parent.parent, "home")


def test_b08_refuses_home_through_a_symlink(refused, home, ct):
    (ct / "h").symlink_to(home)
    refused(ct / "h", "home")


def test_b08_refuses_the_checkout_and_state(refused, state_dir):
    refused(ROOT, "checkout")
    refused(ROOT / "bin", "checkout")  # inside the checkout: the agent could rewrite clod's own scripts
    refused(state_dir, "state")
    refused(state_dir / "locks", "state")
    refused(state_dir.parent)  # an ancestor of the state dir (and of HOME here)


def test_b08_refuses_ancestor_of_a_state_dir_elsewhere(clod, ct):
    state = ct / "deep" / "state"
    state.mkdir(parents=True)
    code, _, err = clod("clod-add", ct / "deep", env={"CLOD_STATE_DIR": str(state)})
    assert code == 1 and "state" in err
    assert not (state / "projects.json").exists()


def test_b08_refuses_ssh_and_tart(refused, home):
    (home / ".ssh" / "keys").mkdir(parents=True)
    (home / ".tart" / "vms").mkdir(parents=True)
    refused(home / ".ssh", "SSH")
    refused(home / ".ssh" / "keys", "SSH")
    refused(home / ".tart", "Tart")
    refused(home / ".tart" / "vms", "Tart")


def test_refuses_non_directories_and_missing(refused, ct):
    (ct / "file").write_text("x")
    (ct / "dangling").symlink_to(ct / "nowhere")
    refused(ct / "file", "not a directory")
    refused(ct / "nowhere", "no such directory")
    refused(ct / "dangling", "no such directory")
    refused("", "no directory")


def test_refuses_colon_and_newline(refused, ct):
    (ct / "a:b").mkdir()
    (ct / "a\nb").mkdir()
    (ct / "a\rb").mkdir()
    refused(ct / "a:b", "':'")
    refused(ct / "a\nb", "line break")
    refused(ct / "a\rb", "line break")


def test_refuses_non_utf8_path(refused, ct):
    path = os.fsdecode(os.fsencode(ct) + b"/bad\xff")
    os.mkdir(path)
    refused(path, "UTF-8")


def test_refuses_very_long_path(refused, ct):
    refused(ct / ("x" * 300), "no such directory")


def test_library_refusals_match_the_script(ct, home):
    with pytest.raises(ClodError, match="home"):
        projects.check_mappable(str(home))
    with pytest.raises(ClodError, match="checkout"):
        projects.check_mappable(str(ROOT / "lib" / "clod"))
    assert projects.check_mappable(str(ct)) == str(ct)


# ---------------------------------------------------------------- names


def test_default_name_is_basename_and_second_app_gets_app_2(clod, ct):
    (ct / "a" / "app").mkdir(parents=True)
    (ct / "b" / "app").mkdir(parents=True)
    (ct / "c" / "App").mkdir(parents=True)
    assert clod("clod-add", ct / "a" / "app", check=True).stdout == "app\n"
    assert clod("clod-add", ct / "b" / "app", check=True).stdout == "app-2\n"
    assert clod("clod-add", ct / "c" / "App", check=True).stdout == "App-3\n"  # case-insensitive
    # Adding again keeps the name (deterministic) and makes no duplicate.
    assert clod("clod-add", ct / "b" / "app", check=True).stdout == "app-2\n"
    assert len(listed(clod)) == 3


def test_user_name_collision_is_an_error(clod, ct, state_dir):
    for d in ("x", "y"):
        (ct / d).mkdir()
    clod("clod-add", ct / "x", "web", check=True)
    before = projects_file(state_dir).read_bytes()
    for taken in ("web", "WEB", "Web"):
        code, out, err = clod("clod-add", ct / "y", taken)
        assert code == 1 and out == ""
        assert "already used" in err and str(ct / "x") in err
    assert projects_file(state_dir).read_bytes() == before


def test_user_name_renames_an_existing_project(clod, ct):
    (ct / "x").mkdir()
    clod("clod-add", ct / "x", check=True)
    assert clod("clod-add", ct / "x", "better", check=True).stdout == "better\n"
    assert [r["name"] for r in listed(clod)] == ["better"]
    # Its own name in another case is not a collision with itself.
    assert clod("clod-add", ct / "x", "BETTER", check=True).stdout == "BETTER\n"


@pytest.mark.parametrize("bad", ["a/b", "a:b", "a,b", "a\\b", ".hidden", "..", ".", "-x", "", " ", "tab\there", "x" * 65, "trailing "])
def test_invalid_names_exit_2(clod, ct, state_dir, bad):
    (ct / "d").mkdir()
    code, out, err = clod("clod-add", "--", ct / "d", bad)
    assert code == 2, err
    assert out == "" and "invalid project name" in err and "Traceback" not in err
    assert not projects_file(state_dir).exists()


def test_sanitising_never_collides(clod, ct):
    spellings = ["a,b", "a\\b", "a\tb", "a-b", ".a-b", "-a-b"]
    for s in spellings:
        (ct / s).mkdir()
        clod("clod-add", ct / s, check=True)
    names = [r["name"] for r in listed(clod)]
    assert len(set(n.casefold() for n in names)) == len(spellings)
    for name in names:
        assert projects.sanitize(name) == name
        assert not set(name) & set("/:,\\")
    assert names[0] == "a-b"


def test_long_basenames_truncate_without_colliding(clod, ct):
    base = "n" * 100
    for d in ("1", "2"):
        (ct / d / base).mkdir(parents=True)
        clod("clod-add", ct / d / base, check=True)
    names = [r["name"] for r in listed(clod)]
    assert names == ["n" * 64, "n" * 62 + "-2"]


def test_sanitize_pure():
    assert projects.sanitize("app") == "app"
    assert projects.sanitize("a:b,c/d") == "a-b-c-d"
    assert projects.sanitize("..") == "project"
    assert projects.sanitize("-x") == "x"
    assert projects.sanitize("a\x00b\nc") == "a-b-c"
    assert projects.sanitize("cafe\u0301") == "caf\u00e9"  # NFC, as a macOS guest would store it
    assert len(projects.sanitize("z" * 500)) == projects.NAME_MAX


def test_nfd_and_nfc_names_collide(clod, ct):
    (ct / "cafe\u0301").mkdir()
    (ct / "x").mkdir()
    (ct / "x" / "caf\u00e9").mkdir()
    assert clod("clod-add", ct / "cafe\u0301", check=True).stdout == "caf\u00e9\n"
    assert clod("clod-add", ct / "x" / "caf\u00e9", check=True).stdout == "caf\u00e9-2\n"


# ---------------------------------------------------------------- active project


def test_active_is_the_last_added_or_re_added(clod, ct):
    for d in ("one", "two"):
        (ct / d).mkdir()
        clod("clod-add", ct / d, check=True)
    assert clod("project-map", "active", check=True).stdout == f"{ct / 'two'}\n"
    clod("clod-add", ct / "one/", check=True)
    assert clod("project-map", "active", check=True).stdout == f"{ct / 'one'}\n"
    rows = listed(clod)
    assert [(r["name"], r["active"]) for r in rows] == [("one", True), ("two", False)]
    _, table, _ = clod("clod-list", check=True)
    assert table.splitlines()[0].startswith("* one")


def test_active_after_removing_the_active_one(clod, ct):
    for d in ("one", "two"):
        (ct / d).mkdir()
        clod("clod-add", ct / d, check=True)
    clod("clod-remove", "two", check=True)
    assert clod("project-map", "active", check=True).stdout == f"{ct / 'one'}\n"
    clod("clod-remove", "one", check=True)
    code, out, err = clod("project-map", "active")
    assert code == 1 and out == "" and "clod add" in err


def test_using_a_project_again_makes_it_active(ct):
    # `clod run` in a project adds it again, which is what "used" means.
    for d in ("one", "two"):
        (ct / d).mkdir()
        projects.add(str(ct / d))
    projects.add(str(ct / "one"))
    assert projects.active(projects.load()).name == "one"
    assert len(projects.load()) == 2


def test_dirs_order_is_stable_by_addition(clod, ct):
    for d in ("b", "a", "c"):
        (ct / d).mkdir()
        clod("clod-add", ct / d, check=True)
    clod("clod-add", ct / "b", check=True)  # re-adding changes the active one, not the order
    _, out, _ = clod("project-map", "dirs", check=True)
    assert out.splitlines() == [f"--dir={d}:{ct / d}" for d in ("b", "a", "c")]


def test_dash_dash_ends_options(clod, ct):
    (ct / "-app").mkdir()
    assert clod("clod-add", "--", "-app", cwd=ct, check=True).stdout == "app\n"
    assert clod("clod-remove", "--", "-app", cwd=ct, check=True).stdout == "app\n"
    assert clod("project-map", "add", "--", "-app", cwd=ct, check=True).stdout == "app\n"
    assert clod("project-map", "remove", "--", "./-app", cwd=ct, check=True).stdout == "app\n"


def test_overlapping_projects_warn(clod, ct):
    (ct / "outer" / "inner").mkdir(parents=True)
    clod("clod-add", ct / "outer", check=True)
    code, _, err = clod("clod-add", ct / "outer" / "inner")
    assert code == 0 and "overlap" in err


def test_many_repos_warn(clod, ct):
    for repo in ("r1", "r2", "r3"):
        (ct / "src" / repo / ".git").mkdir(parents=True)
    code, _, err = clod("clod-add", ct / "src")
    assert code == 0 and "3 git repositories" in err


def test_quiet_add_prints_only_the_name(clod, ct):
    (ct / "app").mkdir()
    code, out, err = clod("clod-add", "-q", ct / "app")
    assert (code, out, err) == (0, "app\n", "")


def test_deleted_dir_with_symlinked_parent_still_removable(clod, ct):
    (ct / "real" / "proj").mkdir(parents=True)
    (ct / "link").symlink_to(ct / "real")
    clod("clod-add", ct / "link" / "proj", check=True)
    (ct / "real" / "proj").rmdir()
    clod("clod-remove", ct / "link" / "proj", check=True)
    assert listed(clod) == []


def test_state_file_is_only_written_on_success(clod, ct, state_dir):
    code, _, _ = clod("clod-add", ct / "missing")
    assert code == 1
    assert not Path(projects_file(state_dir)).exists()


# ---------------------------------------------------------------- found by trying to break it


def test_name_starting_with_tilde_is_removable_by_name(clod, ct):
    (ct / "x").mkdir()
    clod("clod-add", ct / "x", "~app", check=True)
    assert clod("clod-remove", "~app", check=True).stdout == "~app\n"
    assert listed(clod) == []


def test_dot_spelling_still_removes_the_cwd(clod, ct):
    (ct / "app").mkdir()
    clod("clod-add", ".", cwd=ct / "app", check=True)
    clod("clod-remove", ".", cwd=ct / "app", check=True)
    assert listed(clod) == []


def test_hints_quote_names_for_the_shell(clod, ct):
    gone = ct / "it's gone"
    gone.mkdir()
    clod("clod-add", gone, check=True)
    gone.rmdir()
    _, _, err = clod("project-map", "dirs")
    command = err.rpartition("clod remove ")[2].strip()
    assert shlex.split(command) == ["it's gone"]
    _, table, _ = clod("clod-list")
    assert shlex.split(table.rpartition("clod remove ")[2].rstrip(")\n")) == ["it's gone"]


def test_ssh_dir_that_is_a_symlink_is_still_refused(refused, home, ct):
    keys = ct / "keys"
    keys.mkdir()
    (home / ".ssh").symlink_to(keys)
    refused(keys, "SSH")


def test_mapped_dir_swapped_for_a_symlink_to_home_is_not_shared(clod, ct, home):
    app = ct / "app"
    app.mkdir()
    clod("clod-add", app, check=True)
    app.rmdir()
    app.symlink_to(home)
    code, out, err = clod("project-map", "dirs")
    assert code == 1 and out == ""
    assert "symlink" in err and str(home) in err
    clod("clod-remove", "app", check=True)  # and it can still be removed


def test_parallel_adds_of_same_basename_get_unique_names(ct, isolated_env):
    dirs = [ct / str(i) / "app" for i in range(8)]
    for d in dirs:
        d.mkdir(parents=True)
    children = [subprocess.Popen([str(ROOT / "bin" / "clod-add"), "-q", d], env=isolated_env, stdout=subprocess.PIPE) for d in dirs]
    names = [child.communicate(timeout=60)[0].decode().strip() for child in children]
    assert sorted(names) == sorted(["app"] + [f"app-{n}" for n in range(2, 9)])


def test_parallel_adds_of_one_dir_make_one_entry(clod, ct, isolated_env):
    (ct / "app").mkdir()
    spellings = [ct / "app", f"{ct}/app/", f"{ct}/app/.", f"{ct}/app/../app"] * 2
    children = [subprocess.Popen([str(ROOT / "bin" / "clod-add"), "-q", s], env=isolated_env) for s in spellings]
    assert [child.wait(timeout=60) for child in children] == [0] * len(spellings)
    assert len(listed(clod)) == 1


def test_c_locale_round_trip(clod, ct):
    path = ct / "café 日本"
    path.mkdir()
    c_locale = {"LC_ALL": "C", "LANG": "C"}
    assert clod("clod-add", path, env=c_locale, check=True).stdout == "café 日本\n"
    assert listed(clod)[0]["path"] == str(path)
    clod("clod-remove", path, env=c_locale, check=True)


def test_names_fit_a_guest_file_name_in_bytes(clod, ct):
    (ct / "x").mkdir()
    code, _, err = clod("clod-add", ct / "x", "😀" * 64)  # 64 characters but 256 bytes
    assert code == 2 and "invalid project name" in err
    assert len(projects.sanitize("😀" * 100).encode()) <= 255
    name = clod("clod-add", ct / "x", "😀" * 63, check=True).stdout.strip()
    assert len(name.encode()) <= 255


def test_unreadable_symlink_in_project_is_not_an_internal_error(ct, monkeypatch):
    app = ct / "app"
    app.mkdir()
    (app / "locked").symlink_to("/proc/1/cwd/x")
    real_realpath = os.path.realpath

    def realpath(path, *args, **kwargs):
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", "/proc/1/cwd")
        return real_realpath(path, *args, **kwargs)

    monkeypatch.setattr(os.path, "realpath", realpath)
    project, created = projects.add(str(app))
    assert created and project.name == "app"
