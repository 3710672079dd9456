"""`python -m zipfnce bench` runs end to end: the table on stdout and DIR/report.md with the same rows."""

import os
import re
import subprocess
import sys


def test_bench_quick_run_writes_a_report(tmp_path):
    out = tmp_path / "bench"
    r = subprocess.run(
        [sys.executable, "-m", "zipfnce", "bench", "--quick", "--filter", "small call", "--out", str(out)],
        capture_output=True, text=True, timeout=600, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [line for line in r.stdout.splitlines() if line.startswith("| log-uniform unique S=64")]
    assert rows, r.stdout
    # Every row names a peer and a ratio "N.N×" measured against it.
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert re.fullmatch(r"\d+(\.\d+)? (µs|ms|s)", cells[1]), row
        assert re.fullmatch(r"\d+(\.\d+)?×", cells[4]), row
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "zipfnce threads:" in report
    for row in rows:
        assert row in report
