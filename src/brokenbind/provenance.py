"""Which code produced a result: a hash of the sources that train and score, and the git commit when there is one.

``code_hash`` hashes every ``.py`` and ``.yaml`` file of the installed ``brokenbind`` and ``datamodules`` packages
(path and content): it works for a git checkout, an editable install and a plain ``pip install`` alike, changes with
any uncommitted edit, and not with a commit that leaves the code alone (README, tests, results). ``commit`` names the
git commit for a reader (``+changes`` when these sources differ from it); it is empty outside a git checkout.
"""

import hashlib
import importlib.util
import shutil
import subprocess
from functools import cache
from pathlib import Path

import brokenbind

# datamodules located, not imported: importing it imports Lightning (seconds), which a caller may not need
PACKAGES = (Path(brokenbind.__file__).parent, Path(importlib.util.find_spec("datamodules").origin).parent)


@cache
def code_hash() -> str:
    digest = hashlib.sha256()
    for package in PACKAGES:
        for path in sorted(package.rglob("*")):
            if path.suffix in (".py", ".yaml") and "__pycache__" not in path.parts:
                digest.update(f"{package.name}/{path.relative_to(package).as_posix()}\n".encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


@cache
def commit() -> str:
    git = shutil.which("git")
    if git is None:
        return ""
    where = {"cwd": PACKAGES[0], "capture_output": True, "text": True}
    # the sources must be tracked: an installed package may sit inside some other checkout (a .venv in a project)
    tracked = subprocess.run([git, "ls-files", "--error-unmatch", "__init__.py"], **where)
    if tracked.returncode != 0:
        return ""
    head = subprocess.run([git, "rev-parse", "--short", "HEAD"], **where).stdout.strip()
    changes = subprocess.run([git, "status", "--porcelain", "--", *map(str, PACKAGES)], **where).stdout.strip()
    return head + ("+changes" if changes else "")
