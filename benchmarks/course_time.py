"""Time the whole course: every notebook and every solution, in order, from a clean cache (issue 10).

    PYTHONPATH=. python benchmarks/course_time.py            # fresh cache/, outputs not kept
    PYTHONPATH=. python benchmarks/course_time.py --inplace  # also store the outputs in the notebooks

A student runs the notebooks in order; the first one that needs the course data builds it
into `cache/` (through `echo_lite.course`), later ones reuse it. `--fresh` (default) removes
`cache/` first so the figure includes that work. Prints one row per notebook, the total,
and the last line `course_minutes_vs_budget: X / 25`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import nbformat
from nbconvert.preprocessors import ExecutePreprocessor

REPO = Path(__file__).resolve().parents[1]
BUDGET_MIN = 25.0  # issue 10: the whole series in under 25 minutes on a 2-core machine


def notebooks() -> list[Path]:
    nb = REPO / "notebooks"
    return sorted(nb.glob("[0-9][0-9]_*.ipynb")) + sorted((nb / "solutions").glob("[0-9][0-9]_*.ipynb"))


def run_one(path: Path, inplace: bool, timeout: int) -> float:
    """Execute one notebook in its own directory (as nbval does); returns wall seconds."""
    nb = nbformat.read(path, as_version=4)
    ep = ExecutePreprocessor(timeout=timeout, kernel_name="python3")
    t0 = time.perf_counter()
    ep.preprocess(nb, {"metadata": {"path": str(path.parent)}})
    seconds = time.perf_counter() - t0
    if inplace:
        nbformat.write(nb, path)
    return seconds


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--no-fresh", dest="fresh", action="store_false", help="keep cache/ (warm run)")
    p.add_argument("--inplace", action="store_true", help="write the executed notebooks back")
    p.add_argument("--timeout", type=int, default=1200, help="seconds per cell")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.fresh:
        shutil.rmtree(REPO / "cache", ignore_errors=True)
    rows = []
    print(f"# course_time: {'fresh' if args.fresh else 'warm'} cache/, notebooks executed in order")
    print("| notebook | seconds |")
    print("|---|---|")
    for path in notebooks():
        s = run_one(path, args.inplace, args.timeout)
        rows.append({"notebook": str(path.relative_to(REPO)), "seconds": s})
        print(f"| {path.relative_to(REPO / 'notebooks')} | {s:.0f} |", flush=True)
    total = sum(r["seconds"] for r in rows)
    print(f"| **all {len(rows)}** | **{total:.0f}** |")
    figures = {"fresh": args.fresh, "rows": rows, "total_s": total, "budget_min": BUDGET_MIN}
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    print(f"course_minutes_vs_budget: {total / 60:.1f} / {BUDGET_MIN:.0f}")
    return figures


if __name__ == "__main__":
    main()
