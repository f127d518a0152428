"""Fixtures shared by the end-to-end tests: one clod state dir per test
session whose Debian base image is built once, through Make, as a user's
first run would. Loaded with pytest_plugins = ["qemu_host"] (a conftest.py
here would clash with tests/conftest.py, which tests import by name).
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NEEDED = ("qemu-system-x86_64", "qemu-img", "mmdebstrap", "passt", "unshare", "ssh", "git")


def missing_tools() -> list[str]:
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    missing = [tool for tool in NEEDED if not shutil.which(tool, path=path)]
    if not os.path.exists("/usr/lib/qemu/virtiofsd"):
        missing.append("virtiofsd (qemu-system-common)")
    return missing


@pytest.fixture(scope="session")
def qemu_env(tmp_path_factory) -> dict[str, str]:
    """Environment for clod's scripts: its own state dir and HOME, QEMU backend,
    and a built base image."""
    if missing_tools():
        pytest.skip("QEMU e2e needs: " + ", ".join(missing_tools()) + " (sudo apt-get install qemu-system-x86 qemu-utils mmdebstrap passt)")
    top = tmp_path_factory.mktemp("qemu-e2e")
    home = top / "home"
    home.mkdir()
    (home / ".gitconfig").write_text("[user]\n\tname = E2E Tester\n\temail = e2e@example.com\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLOD_", "PYTEST_"))}
    env.update(
        CLOD_STATE_DIR=str(top / "state"),
        CLOD_BACKEND="qemu",
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        NO_COLOR="1",
    )
    built = subprocess.run(["make", "-s", "-C", str(ROOT), "base"], env=env, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    return env
