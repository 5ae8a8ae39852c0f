"""Results files: writing them, and turning them into tables, a picture and BENCHMARKS.md."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from .environment import device_slug, header

# For each case: tessera's time is compared with these implementations, in this order.
ANCHORS = ("flex", "flex-tiled", "sdpa-cudnn", "sdpa-flash", "fla", "reference")


def results_path(directory: Path, device, suite: str, date: str) -> Path:
    return Path(directory) / f"{date}-{device_slug(device)}-{suite}.json"


def write_results(path: Path, device, records: list[dict]) -> dict:
    payload = {**header(device), "records": records}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload, indent=1) + "\n")
    return payload


def write_case_rows(path: Path, device, cases: dict, case_row, **fields) -> dict:
    """Tuning files: ``case_row(*arguments, device)`` for every ``name -> arguments`` of
    ``cases``, each row printed as it lands, written to ``path`` as ``{header, **fields, "cases":
    {name: row}}``."""
    payload = {**header(device), **fields, "cases": {}}
    for name, arguments in cases.items():
        payload["cases"][name] = case_row(*arguments, device)
        print(name, json.dumps(payload["cases"][name]), flush=True)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload, indent=1) + "\n")
    return payload


def _shape_key(case: str) -> tuple[str, str, str]:
    """(sequence length, batch, head dim) named in a case; batch 1 and head dim 128 by default.
    N-D cases name their grid instead of S: its token count stands for S."""
    seq = re.search(r"S=(\d+)", case)
    grid = re.search(r"\b(\d+(?:x\d+)*) (?:k|blocked|window)", case)
    batch = re.search(r"B=(\d+)", case)
    dim = re.search(r"D=(\d+)", case)
    tokens = seq.group(1) if seq else (str(math.prod(int(g) for g in grid.group(1).split("x"))) if grid else "")
    return (tokens, batch.group(1) if batch else "1", dim.group(1) if dim else "128")


def _baseline(records: list[dict], case: str, direction: str, impl: str) -> dict | None:
    """The dense (non-causal) record of ``impl`` at the case's sequence length and batch."""
    key = _shape_key(case)
    for r in records:
        if (r["direction"] == direction and r["impl"] == impl and r["ms"] and r["case"].startswith("dense")
                and not r["case"].endswith("auto") and _shape_key(r["case"]) == key):
            return r
    return None


def comparison_rows(records: list[dict]) -> list[dict]:
    """One row per (case, direction): each implementation's ms and TFLOP/s, tessera's speed ratio
    to every anchor present (anchor ms / tessera ms: above 1 means tessera is faster), tessera's
    speedup over dense cuDNN at the same shape and its sparse efficiency (useful TFLOP/s over its
    own dense TFLOP/s at the same shape)."""
    records = [r for r in records if not r.get("invalid")]
    rows: dict[tuple[str, str], dict] = {}
    for r in records:
        row = rows.setdefault((r["case"], r["direction"]), {"case": r["case"], "direction": r["direction"],
                                                             "ms": {}, "tflops": {}})
        row["ms"][r["impl"]] = r["ms"]
        row["tflops"][r["impl"]] = r["useful_tflops"]
    out = []
    for (case, direction), row in rows.items():
        ours = row["ms"].get("tessera")
        row["ratio"] = {a: row["ms"][a] / ours for a in ANCHORS
                        if ours and row["ms"].get(a) and a != "tessera"}
        dense_cudnn = _baseline(records, case, direction, "sdpa-cudnn")
        row["speedup_vs_dense_cudnn"] = dense_cudnn["ms"] / ours if ours and dense_cudnn else None
        own_dense = _baseline(records, case, direction, "tessera")
        row["sparse_efficiency"] = None
        if own_dense and row["tflops"].get("tessera") and not case.startswith("dense"):
            row["sparse_efficiency"] = row["tflops"]["tessera"] / own_dense["useful_tflops"]
        out.append(row)
    return out


def _fmt(x, spec="{:.3f}"):
    return "-" if x is None else spec.format(x)


def markdown_table(payload: dict) -> str:
    rows = comparison_rows(payload["records"])
    impls = [i for i in ("tessera", *ANCHORS) if any(i in r["ms"] for r in rows)]
    ratios = [a for a in ANCHORS if any(a in r["ratio"] for r in rows)]
    head = (["case", "dir"] + [f"{i} ms (TFLOP/s)" for i in impls] + [f"vs {a}" for a in ratios]
            + ["vs dense cuDNN", "sparse eff."])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["case"], r["direction"]]
        for i in impls:
            ms, tf = r["ms"].get(i), r["tflops"].get(i)
            cells.append("-" if ms is None else f"{ms:.3f} ({tf:.0f})" if tf else f"{ms:.3f}")
        cells += [_fmt(r["ratio"].get(a), "{:.2f}x") for a in ratios]
        cells += [_fmt(r["speedup_vs_dense_cudnn"], "{:.2f}x"), _fmt(r["sparse_efficiency"], "{:.2f}")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def print_table(payload: dict) -> None:
    """The comparison as a rich table on the terminal."""
    from rich.console import Console
    from rich.table import Table

    rows = comparison_rows(payload["records"])
    impls = [i for i in ("tessera", *ANCHORS) if any(i in r["ms"] for r in rows)]
    ratios = [a for a in ANCHORS if any(a in r["ratio"] for r in rows)]
    table = Table(title=f"{payload['device']} · torch {payload['torch']} · triton {payload['triton']} · {payload['date']}")
    table.add_column("case")
    table.add_column("dir")
    for i in impls:
        table.add_column(f"{i} ms", justify="right")
    for a in ratios:
        table.add_column(f"vs {a}", justify="right")
    table.add_column("TFLOP/s", justify="right")
    for r in rows:
        cells = [r["case"], r["direction"]] + [_fmt(r["ms"].get(i)) for i in impls]
        cells += [_fmt(r["ratio"].get(a), "{:.2f}x") for a in ratios]
        cells.append(_fmt(r["tflops"].get("tessera"), "{:.3g}"))
        table.add_row(*cells)
    Console().print(table)


def save_plot(payload: dict, path: Path) -> None:
    """Bar chart of useful TFLOP/s per case and implementation."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = comparison_rows(payload["records"])
    impls = [i for i in ("tessera", *ANCHORS) if any(r["tflops"].get(i) for r in rows)]
    labels = [f"{r['case']} {r['direction']}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(8, 0.45 * len(rows) * max(1, len(impls))), 5))
    width = 0.8 / max(1, len(impls))
    for n, impl in enumerate(impls):
        values = [r["tflops"].get(impl) or 0.0 for r in rows]
        ax.bar([x + n * width for x in range(len(rows))], values, width, label=impl)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(rows))])
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("useful TFLOP/s")
    ax.set_title(f"{payload['device']} · {payload['date']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _run_order(path: Path) -> tuple:
    """Sort key of a results file ``<date>-<device>-<suite>[-<n>].json`` within its date: device
    and suite name, then the latest run (``-<n>``; none is run 1) first."""
    match = re.fullmatch(r"(.*?)(?:-(\d+))?(?:\.json)?", path.name[11:])
    return match[1], -int(match[2] or 1)


def benchmarks_markdown(results_dir: Path) -> str:
    """BENCHMARKS.md: one section per committed results file, newest date first, then by device
    and suite name, latest run of a suite first."""
    parts = ["# Benchmarks", "",
             "Generated by `python benchmarks/make_benchmarks_md.py` from the JSON files in "
             "`benchmarks/results/`; do not edit by hand. Ratios are anchor time over tessera time "
             "(above 1: tessera is faster). TFLOP/s count only allowed (query, key) pairs.", ""]
    paths = sorted(Path(results_dir).glob("*.json"), key=_run_order)
    for path in sorted(paths, key=lambda p: p.name[:10], reverse=True):  # newest date first
        payload = json.loads(path.read_text())
        parts += [f"## {path.name}", "",
                  f"{payload['device']} · torch {payload['torch']} · triton {payload['triton']} · {payload['date']}", ""]
        parts += [f"> {note}" for note in payload.get("notes", [])] + ([""] if payload.get("notes") else [])
        if any(r.get("suite") == "attention" for r in payload["records"]):
            parts += [markdown_table(payload), ""]
        else:
            # Launch-setting sweeps are tuning notes, not comparisons.
            parts += [_plain_table([r for r in payload["records"] if not str(r.get("suite")).endswith("sweep")]), ""]
    for path in sorted((Path(results_dir) / "eval").glob("*.json"), reverse=True):
        payload = json.loads(path.read_text())
        parts += [f"## {path.name} (quality: {payload['eval']})", "",
                  f"torch {payload['torch']} · {payload['date']} · `{payload.get('command', '')}`", "",
                  _rows_table(payload["results"]), ""]
    return "\n".join(parts)


def _rows_table(rows: list[dict]) -> str:
    """A Markdown table of uniform dicts, columns in their key order."""
    cols = list(rows[0]) if rows else []
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def _plain_table(records: list[dict]) -> str:
    cols = ["suite", "case", "impl", "direction", "ms", "useful_tflops", "tokens_per_s", "tbps"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in records:
        lines.append("| " + " | ".join(_fmt(r.get(c), "{:.4g}") if isinstance(r.get(c), float)
                                       else str(r.get(c) if r.get(c) is not None else "-") for c in cols) + " |")
    return "\n".join(lines)
