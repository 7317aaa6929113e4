"""The README's snippets and the examples run as they are written."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SNIPPETS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"),
                      re.S)


def test_the_readme_has_exactly_two_shell_commands_to_paste() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = re.findall(r"```bash\n(.*?)```", readme, re.S)
    assert len(commands) == 2
    assert all(len(c.strip().splitlines()) == 1 for c in commands)
    assert "pytest" in commands[1]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert commands[1].strip() in ci  # CI runs exactly the README's test command


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[f"snippet{i}" for i in range(len(SNIPPETS))])
def test_readme_snippet_runs(snippet: str, tmp_path: Path) -> None:
    script = tmp_path / "snippet.py"
    script.write_text(textwrap.dedent(snippet), encoding="utf-8")  # one in a list is indented
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize(
    ("example", "args"),
    [
        ("pipeline.py", ["--files", "200", "--workers", "8"]),
        ("live_progress.py", ["--files", "300", "--workers", "4"]),
    ],
)
def test_example_runs_on_real_files(example: str, args: list[str], tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / example), *args, "--out", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert any(out.iterdir())


@pytest.mark.parametrize("example", ["pipeline.py", "live_progress.py"])
def test_example_refuses_zero_workers_with_a_usage_message(example: str, tmp_path: Path) -> None:
    # with no worker the file stream's sender closed first: a BrokenResourceError traceback
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / example), "--workers", "0", "--files", "5",
         "--out", str(tmp_path / "out")],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "--workers must be >= 1" in result.stderr
    assert "Traceback" not in result.stderr
