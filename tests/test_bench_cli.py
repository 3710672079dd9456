"""`python -m zipfnce` on the command line: --version, plain --help, and `bench` end to end (the table on
stdout and DIR/report.md with the same rows, each row readable on its own, targets explained, skipped peers
named with the command that adds them)."""

import dataclasses
import importlib.util
import os
import re
import subprocess
import sys

import pytest
import zipfnce
from zipfnce.bench.cases import BOUND, PEERS, adapter_cases, loss_cases, sampler_cases
from zipfnce.bench.report import ONE_X_LABEL, _speedup_figure, describe, met, table, target_cell
from zipfnce.bench.runner import Result

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


def _cli(*args, code=None, timeout=600):
    """Run `python -m zipfnce ARGS`, or with `code` the Python source given, which runs the CLI itself."""
    cmd = [sys.executable, "-c", code] if code else [sys.executable, "-m", "zipfnce"]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=timeout, env=ENV)


def _cells(row):
    return [c.strip() for c in row.strip().strip("|").split("|")]


def test_version_prints_the_installed_version():
    r = _cli("--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"zipfnce {zipfnce.__version__}"


@pytest.mark.parametrize("args", [["--help"], ["bench", "--help"]], ids=["top", "bench"])
def test_help_is_plain_text(args):
    r = _cli(*args)
    assert r.returncode == 0, r.stderr
    assert "``" not in r.stdout, r.stdout  # no reStructuredText markup on the terminal
    assert ":mod:" not in r.stdout and ":func:" not in r.stdout
    assert "python -m zipfnce bench" in r.stdout
    if args[0] == "bench":
        assert "report.md" in r.stdout and "--filter" in r.stdout


def test_bench_quick_run_writes_a_report(tmp_path):
    out = tmp_path / "bench"
    r = _cli("bench", "--quick", "--filter", "small call", "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [line for line in r.stdout.splitlines() if line.startswith("| log-uniform unique S=64")]
    assert rows, r.stdout
    # Every row names what it compares with, its ratio "N.N×" and reads out in words.
    for row in rows:
        cells = _cells(row)
        assert len(cells) == 7, row
        assert re.fullmatch(r"\d+(\.\d+)? (µs|ms|s)", cells[1]), row
        assert re.fullmatch(r"\d+(\.\d+)?×", cells[4]), row
        assert cells[2] and cells[6], row
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "zipfnce threads:" in report
    # Which kernels ran: the SIMD level, in the report and on the screen (issue 18).
    level = re.search(r"zipfnce's SIMD level: (avx512|avx2|baseline) \(", report)
    assert level, report[:600]
    assert f"zipfnce's SIMD level: {level.group(1)}" in r.stdout
    assert "--filter 'small call'" in report  # the command line that repeats the run
    for row in rows:
        assert row in report
    # The TensorFlow row: named, judged against its target (≥ 5×) consistently with its ratio, in words.
    tf_rows = [row for row in rows if _cells(row)[2] == "TensorFlow"]
    if importlib.util.find_spec("tensorflow") is not None:
        assert len(tf_rows) == 1, rows
        case, z, peer, t, speedup, target, words = _cells(tf_rows[0])
        ratio = float(speedup.rstrip("×"))
        assert target == f"≥ 5× faster: {'✓ met' if ratio >= 5 else '✗ not met here'}"
        verb = f"is {speedup} faster than" if ratio >= 1 else "takes"
        assert words.startswith(f"zipfnce {verb}") and words.endswith("TensorFlow"), words
        assert "TensorFlow skipped" not in report + r.stdout
    if importlib.util.find_spec("torch") is not None:
        assert "PyTorch skipped" not in report + r.stdout
    # Targets are explained once, at the top, before the rows.
    how = report.index("## How to read this report")
    assert how < report.index(rows[0])
    terms = ("**target**", "✗ not met here", "not a failure of correctness", "hardware bound (NumPy sgemm)",
             "zipfnce drop-in", "≤ 1.3× the bound's time")  # fmt: skip
    for term in terms:
        assert term in report[how:], term
    assert re.search(r"targets met on this machine: \d+ of \d+", r.stdout)


def test_bench_names_the_peers_it_could_not_import(tmp_path):
    """TensorFlow and PyTorch made unimportable (a None entry in sys.modules, as for a package that is not
    installed): the bench still runs, and both the table and report.md name each skipped peer and the
    command that adds it."""
    out = tmp_path / "bench"
    code = (
        "import sys; sys.modules['tensorflow'] = None; sys.modules['torch'] = None\n"
        "from zipfnce.__main__ import main\n"
        "sys.exit(main(sys.argv[1:]))"
    )
    r = _cli("bench", "--quick", "--filter", "log-uniform draws", "--out", str(out), code=code)
    assert r.returncode == 0, r.stderr[-2000:]
    report = (out / "report.md").read_text(encoding="utf-8")
    assert {p.name for p in PEERS} >= {"TensorFlow", "PyTorch"}
    for text in (r.stdout, report):
        for peer in PEERS:
            line = next((ln for ln in text.splitlines() if f"{peer.name} skipped" in ln), None)
            assert line is not None, (peer.name, text)
            assert f"`{peer.install}`" in line and f"import {peer.module}" in line, line
    assert "## Peers skipped on this machine" in report
    assert report.index("## Peers skipped") < report.index("## Results")
    # The NumPy row is still measured; no row and no version line claims a blocked framework.
    rows = [ln for ln in report.splitlines() if ln.startswith("| 1e6 log-uniform draws")]
    assert [_cells(row)[2] for row in rows] == ["NumPy"], rows
    versions = next(ln for ln in report.splitlines() if ln.startswith("- python "))
    assert "torch" not in versions and "tensorflow" not in versions, versions


def _case(cases, text):
    return next(c for c in cases if text in c.name)


def test_rows_read_on_their_own():
    small = _case(sampler_cases(), "small call")
    softmax = _case(loss_cases(), "sampled softmax + grads")
    rows = table([
        Result(small, {"zipfnce": 1e-5, "zipfnce drop-in": 1.2e-5, "tensorflow": 3e-5}),
        Result(softmax, {"zipfnce": 0.054, BOUND: 0.05, "tensorflow": 0.027}),
    ])  # fmt: skip
    by_peer = {(_cells(row)[0], _cells(row)[2]): _cells(row) for row in rows[2:]}
    tf_small = by_peer[(small.name, "TensorFlow")]
    assert tf_small[4:] == ["3.00×", "≥ 5× faster: ✗ not met here", "zipfnce is 3.00× faster than TensorFlow"]
    assert by_peer[(small.name, "zipfnce drop-in (TF-style function)")][6] == (
        "the TF-style zn.log_uniform_candidate_sampler takes 1.20× the sampler's time"
    )
    bound = by_peer[(softmax.name, "hardware bound (NumPy sgemm)")]
    assert bound[4:6] == ["0.93×", "≤ 1.3× the bound's time: ✓ met"]
    assert bound[6] == "zipfnce takes 1.08× the hardware bound (NumPy sgemm)"
    assert by_peer[(softmax.name, "TensorFlow")][6] == "zipfnce takes 2.00× the time of TensorFlow"
    # The bound's target is a ceiling on zipfnce's time: 1.35× the bound misses it.
    assert target_cell(softmax, BOUND, 1 / 1.35) == "≤ 1.3× the bound's time: ✗ not met here"
    # Verdicts agree with the figures as printed.
    assert met(5, 4.996) and not met(5, 4.9)
    assert met(1 / 1.3, 1 / 1.3) and not met(1 / 1.3, 1 / 1.32)


def test_adapter_rows_name_what_they_compare():
    if importlib.util.find_spec("torch") is None:
        pytest.skip("the adapter cases need PyTorch")
    case = adapter_cases()[0]
    words = describe(case, "numpy", 1 / 1.05)
    assert words == "zipfnce.torch takes 1.05× the time of the NumPy call it wraps"
    assert target_cell(case, "numpy", 1 / 1.05) == "≤ 1.1× the peer's time: ✓ met"
    assert describe(case, "torch", 3.5) == "zipfnce.torch is 3.50× faster than pure PyTorch"


def test_plots_label_the_one_x_line():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    softmax = _case(loss_cases(), "sampled softmax + grads")
    point = lambda x: dataclasses.replace(softmax, x=x, plot="speed-up vs samples")
    rs = [Result(point(x), {"zipfnce": 1.0, "tensorflow": y, BOUND: 0.9}) for x, y in ((1024, 2), (8192, 4))]
    fig = _speedup_figure("speed-up vs samples", rs, plt)
    try:
        ax = fig.axes[0]
        labels = [t for t in ax.texts if t.get_text() == ONE_X_LABEL]
        assert len(labels) == 1, [t.get_text() for t in ax.texts]
        assert labels[0].xy[1] == 1.0  # on the dashed line at speed-up 1
        lo, hi = ax.get_ylim()
        assert lo <= 1.0 <= hi
        assert {t.get_text() for t in ax.get_legend().get_texts()} == {
            "vs TensorFlow", "vs hardware bound (NumPy sgemm)"}  # fmt: skip
    finally:
        plt.close(fig)
