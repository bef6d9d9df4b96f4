"""What a result was computed with: the command, the machine, the package versions and the git commit."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import shlex
import sys
from pathlib import Path

from prelar import tracking

PACKAGES = ("torch", "numpy", "pandas", "scipy", "mlflow", "matplotlib", "rliable", "arch")


def command() -> str:
    """The command line this process was started with (as `prelar ...` when run through the CLI)."""
    if Path(sys.argv[0]).name == "prelar":
        return shlex.join(["prelar", *sys.argv[1:]])
    return shlex.join(sys.argv)


def versions(packages: tuple[str, ...] = PACKAGES) -> str:
    """ "torch 2.13.0, numpy ..." for the installed `packages`."""
    found = []
    for name in packages:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return ", ".join(found)


def commit() -> str:
    """The git commit of the working directory, marked when the tree has uncommitted changes."""
    tags = tracking.git_commit()
    if tracking.TAG_GIT_COMMIT not in tags:
        return "unknown (not a git checkout)"
    dirty = " (uncommitted changes)" if tags.get("git.dirty") == "true" else ""
    return tags[tracking.TAG_GIT_COMMIT] + dirty


def describe() -> list[tuple[str, str]]:
    """(what, value) rows: command, time, host, platform, Python, CPU cores, packages, git commit."""
    return [
        ("command", command()),
        ("written", datetime.datetime.now().isoformat(" ", "seconds")),
        ("host", platform.node()),
        ("platform", platform.platform()),
        ("python", sys.version.split()[0]),
        ("CPU cores", str(os.cpu_count())),
        ("packages", versions()),
        ("git commit", commit()),
    ]
