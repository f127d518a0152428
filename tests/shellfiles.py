"""Print every shell script in the checkout, NUL-separated, for shellcheck.

A shell script is a *.sh file or a file whose first line names sh, bash or
zsh... except zsh files, which shellcheck cannot check (they are run under
zsh in tests instead).
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP_DIRS = {".git", ".venv", "state", "__pycache__", ".pytest_cache", ".ruff_cache"}


def is_shell(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            first = f.readline(200)
    except OSError:
        return False
    if first.startswith(b"#!"):
        return first.rstrip().split(b"/")[-1].split(b" ")[-1] in (b"sh", b"bash")
    return path.endswith(".sh") and b"zsh" not in first


def shell_files(root: str = ROOT):
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in SKIP_DIRS)
        for name in sorted(files):
            path = os.path.join(directory, name)
            if is_shell(path):
                yield path


if __name__ == "__main__":
    sys.stdout.write("".join(p + "\0" for p in shell_files()))
