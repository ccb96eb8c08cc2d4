"""The lock files pin, with hashes, exactly what pyproject asks for (run `make lock` if not)."""

from __future__ import annotations

import os
import re
import subprocess
import time
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "requirements"
PIN = re.compile(r"^(?P<name>[A-Za-z0-9._-]+)==(?P<version>\S+)(?: ;[^\\]*)? \\$")
HASH = re.compile(r"^\s+--hash=sha256:[0-9a-f]{64}( \\)?$")


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def read_lock(name: str) -> dict[str, tuple[str, int]]:
    """Package -> (pinned version, number of hashes) of one lock file."""
    pins: dict[str, tuple[str, int]] = {}
    current = None
    for line in (REQUIREMENTS / name).read_text().splitlines():
        if match := PIN.match(line):
            current = canonicalize_name(match["name"])
            assert current not in pins, f"{name}: {current} pinned twice"
            pins[current] = (match["version"], 0)
        elif HASH.match(line):
            assert current is not None, f"{name}: hash before any pin"
            version, hashes = pins[current]
            pins[current] = (version, hashes + 1)
        elif line.strip() and not line.lstrip().startswith("#"):
            raise AssertionError(f"{name}: unexpected line {line!r}")
    return pins


def wanted(extra: str | None) -> list[Requirement]:
    project = pyproject()["project"]
    reqs = list(project["dependencies"])
    if extra:
        reqs += project["optional-dependencies"][extra]
    return [Requirement(r) for r in reqs + sorted(build_tools())]


def build_tools() -> set[str]:
    """The requirements of requirements/build.in."""
    lines = (REQUIREMENTS / "build.in").read_text().splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def test_build_tools_are_those_pyproject_builds_with():
    assert build_tools() == set(pyproject()["build-system"]["requires"]) | {"pip"}


def test_each_lock_pins_every_dependency_inside_its_range_with_hashes():
    for lock, extra in (("runtime.lock", None), ("dev.lock", "dev"), ("bench.lock", "bench")):
        pins = read_lock(lock)
        for req in wanted(extra):
            name = canonicalize_name(req.name)
            assert name in pins, f"{lock} lacks {name}: run `make lock`"
            version, _ = pins[name]
            assert req.specifier.contains(version, prereleases=True), (
                f"{lock} pins {name}=={version} outside pyproject's {req}: run `make lock`"
            )
        assert all(hashes for _, hashes in pins.values()), f"{lock} has a pin without a hash"


def test_runtime_only_lock_has_no_dev_tools_and_the_others_agree_with_it():
    runtime = read_lock("runtime.lock")
    for tool in ("pytest", "ruff", "hypothesis"):
        assert tool not in runtime
    for lock in ("dev.lock", "bench.lock"):
        other = read_lock(lock)
        theirs = {name: other.get(name, ("absent", 0))[0] for name in runtime}
        differ = {n: (v, theirs[n]) for n, (v, _) in runtime.items() if theirs[n] != v}
        assert not differ, f"{lock} disagrees with runtime.lock: {differ}"


def make_dry_run(venv: Path, *targets: str) -> str:
    """What `make` would run for `targets` with the venv at `venv` (`make -n`: runs nothing)."""
    out = subprocess.run(
        ["make", "-n", "-C", str(ROOT), f"VENV={venv}", *targets],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return out.stdout


def test_make_installs_from_the_lock_again_when_it_changes(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()
    later = time.time() + 3600  # newer than every file of the checkout
    for lock in ("dev", "bench"):  # `make install` installs both
        marker = venv / f".installed-{lock}"
        marker.touch()
        os.utime(marker, (later, later))
    assert "pip install" not in make_dry_run(venv, "install")
    # `make -W FILE` takes FILE as just changed: only the lock, nothing else.
    commands = make_dry_run(venv, "-W", "requirements/dev.lock", "install")
    assert "--require-hashes --no-deps -r requirements/dev.lock" in commands


def test_make_run_installs_the_runtime_lock_only(tmp_path):
    commands = make_dry_run(tmp_path / "venv", "run")
    assert "-r requirements/runtime.lock" in commands
    assert "dev.lock" not in commands and "[dev]" not in commands
    assert "--no-build-isolation -e ." in commands
