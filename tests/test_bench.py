"""`python -m bench --smoke` runs every section for real and fills every figure of its result.

The figures of a smoke run mean nothing (tiny counts on a loaded machine); what is checked is
that each one was measured: the JSON decodes strictly into `BenchResult` (a renamed or missing
key fails), no section was skipped, and no figure is None.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("floors", "peer", "orchestrator", "scale", "streams", "failover")
# None in these means nothing failed, not a missing figure.
NOT_FIGURES = {"first_error", "first_failure"}


def figures_module():
    """bench/figures.py, loaded by path: `bench` runs from the repository root, which is not on
    the test's import path (its `codecs/` folder must never shadow the standard library)."""
    spec = importlib.util.spec_from_file_location("bench_figures", ROOT / "bench" / "figures.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # msgspec resolves the annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def unfilled(value: object, path: str) -> list[str]:
    """Paths of every None figure and every non-empty `not_measured` under `value`."""
    if isinstance(value, msgspec.Struct):
        found = []
        for name in value.__struct_fields__:
            field = getattr(value, name)
            if name == "not_measured" and field:
                found.append(f"{path}.not_measured = {field}")
            elif field is None and name not in NOT_FIGURES:
                found.append(f"{path}.{name}")
            else:
                found += unfilled(field, f"{path}.{name}")
        return found
    if isinstance(value, list):
        return [p for i, item in enumerate(value) for p in unfilled(item, f"{path}[{i}]")]
    if isinstance(value, dict):
        found = []
        for key, item in value.items():
            if item is None:
                found.append(f"{path}[{key!r}]")
            else:
                found += unfilled(item, f"{path}[{key!r}]")
        return found
    return []


@pytest.mark.timeout(420)
def test_smoke_run_measures_every_figure_of_every_section(tmp_path):
    out = tmp_path / "latest.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=400, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"python -m bench --smoke failed:\n{done.stderr[-4000:]}"

    figures = figures_module()
    result = figures.decode_result(out.read_bytes())
    assert result.run.smoke and set(SECTIONS) <= set(result.run.sections)
    for name in SECTIONS:
        assert getattr(result, name) is not None, f"{name}: {result.not_measured.get(name)}"
    not_run = {name for name in result.not_measured if name not in result.run.sections}
    assert set(result.not_measured) == not_run, result.not_measured
    missing = [
        path
        for name in result.__struct_fields__
        if name not in not_run and name != "not_measured"
        for path in unfilled(getattr(result, name), name)
    ]
    assert not missing, "figures not measured:\n" + "\n".join(missing)

    # Every idle socket is held: a limit of the system under test left at its default shows here.
    assert result.scale.idle_ws.held == result.scale.idle_ws.target, result.scale.idle_ws
    assert result.scale.idle_ws_plain_echo.held == result.scale.idle_ws_plain_echo.target

    # A figure renamed or dropped on either side is refused, not read as "not measured".
    raw = msgspec.json.decode(out.read_bytes())
    raw["ratios"]["orchestrator_capacity"] = raw["ratios"].pop("orchestrator_stream_capacity")
    with pytest.raises(msgspec.ValidationError, match="orchestrator_capacity"):
        figures.decode_result(msgspec.json.encode(raw))

    # The killed instance's chats were answered by the survivor, each exactly once.
    assert result.failover.acknowledged > 0 and result.failover.lost == 0, result.failover
    assert result.ratios.failover_kill_to_last_answer_seconds is not None

    table = out.with_suffix(".md").read_text()
    assert "not measured" not in table
    for heading in (
        "| measurement |",
        "| target (at",
        "| scale | value |",
        "| streams (",
        "| instance kill -> last final answer (s) |",
    ):
        assert heading in table
