"""Regenerate BENCHMARKS.md from benchmarks/results/*.json:  python benchmarks/make_benchmarks_md.py"""

from pathlib import Path

from tessera.bench.report import benchmarks_markdown

ROOT = Path(__file__).resolve().parent.parent

if __name__ == "__main__":
    (ROOT / "BENCHMARKS.md").write_text(benchmarks_markdown(ROOT / "benchmarks" / "results"))
    print(f"wrote {ROOT / 'BENCHMARKS.md'}")
