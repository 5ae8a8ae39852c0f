"""``tessera eval perplexity | passkey | mqar``: quality of attention patterns, with JSON + PNG output."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
from pathlib import Path

import torch


def _write(args, kind: str, settings: dict, results: list) -> None:
    """The results file of ``args.json``, with the command line that produced it."""
    path = args.json
    payload = {"eval": kind, "date": datetime.date.today().isoformat(), "torch": torch.__version__,
               "command": args.command_line, "settings": settings, "results": [dataclasses.asdict(r) for r in results]}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload, indent=1) + "\n")


def _plot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for c in columns:
        table.add_column(c)
    for r in rows:
        table.add_row(*r)
    Console().print(table)


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())


def run_perplexity(args) -> int:
    from .corpus import wikipedia_leads
    from .models import load
    from .perplexity import perplexity_table

    model, tokenizer = load(args.model)
    text = wikipedia_leads(max_chars=args.context * args.windows * 8)
    with _progress() as bar:
        tasks = {s: bar.add_task(s, total=args.windows) for s in args.patterns}
        results = perplexity_table(model, tokenizer, text, args.context, args.patterns, args.windows,
                                   backend=args.backend,
                                   progress=lambda spec, n: bar.update(tasks[spec], completed=n))
    _table(f"perplexity, {args.model}, context {args.context}, {results[0].tokens} tokens",
           ["pattern", "perplexity", "ratio to dense"],
           [[r.pattern, f"{r.perplexity:.3f}", "-" if r.ratio_to_dense is None else f"{r.ratio_to_dense:.3f}"]
            for r in results])
    _write(args, "perplexity", {"model": args.model, "context": args.context, "windows": args.windows,
                                     "corpus": "wikipedia-leads-en"}, results)
    plt = _plot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.barh([r.pattern for r in results], [r.perplexity for r in results])
    ax.set_xlabel("perplexity (lower is better)")
    ax.set_title(f"{args.model}, context {args.context}")
    fig.tight_layout()
    fig.savefig(args.plot, dpi=110)
    print(f"results -> {args.json}, plot -> {args.plot}")
    return 0


def run_passkey(args) -> int:
    from .models import load
    from .passkey import passkey_table

    model, tokenizer = load(args.model)
    total = len(args.patterns) * len(args.lengths) * len(args.depths)
    with _progress() as bar:
        task = bar.add_task("passkey", total=total)
        results = passkey_table(model, tokenizer, args.patterns, args.lengths, args.depths, args.trials,
                                backend=args.backend, progress=lambda r: bar.advance(task))
    rows = []
    for spec in args.patterns:
        for length in args.lengths:
            accs = [r.accuracy for r in results if r.pattern == spec and r.length == length]
            rows.append([spec, str(length)] + [f"{a:.2f}" for a in accs])
    _table(f"passkey accuracy, {args.model}, {args.trials} trials", ["pattern", "length"]
           + [f"depth {d:g}" for d in args.depths], rows)
    _write(args, "passkey", {"model": args.model, "trials": args.trials}, results)
    plt = _plot()
    fig, axes = plt.subplots(1, len(args.patterns), figsize=(3.2 * len(args.patterns), 3), squeeze=False)
    for ax, spec in zip(axes[0], args.patterns):
        grid = torch.tensor([[next(r.accuracy for r in results if r.pattern == spec and r.length == n
                                   and r.depth == d) for n in args.lengths] for d in args.depths])
        ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
        ax.set_xticks(range(len(args.lengths)), [str(n) for n in args.lengths], fontsize=7)
        ax.set_yticks(range(len(args.depths)), [f"{d:g}" for d in args.depths], fontsize=7)
        ax.set_xlabel("length")
        ax.set_ylabel("depth")
        ax.set_title(spec, fontsize=8)
    fig.tight_layout()
    fig.savefig(args.plot, dpi=110)
    print(f"results -> {args.json}, plot -> {args.plot}")
    return 0


def run_mqar(args) -> int:
    from ..patterns import parse
    from .mqar import train_mqar

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    results = []
    configs = [(spec, seq_len, pairs, d_model) for spec in args.patterns for seq_len in args.seq_lens
               for pairs in args.kv_pairs for d_model in args.d_models]
    with _progress() as bar:
        for spec, seq_len, pairs, d_model in configs:
            label = f"{spec} S={seq_len} kv={pairs} d={d_model}"
            task = bar.add_task(label, total=args.epochs)

            def log(msg, task=task, label=label):
                bar.console.print(f"  [{label}] {msg}", markup=False)
                bar.advance(task)
            r = train_mqar(seq_len, pairs, d_model, args.vocab, None if spec == "dense" else parse(spec),
                           args.train, args.test, args.epochs, args.batch_size, args.lr, device=device, log=log)
            r.pattern = spec
            results.append(r)
    _table("MQAR answer accuracy", ["pattern", "seq", "kv pairs", "d_model", "accuracy"],
           [[r.pattern, str(r.seq_len), str(r.num_kv_pairs), str(r.d_model), f"{r.accuracy:.3f}"] for r in results])
    settings = {k: v for k, v in vars(args).items() if k not in ("run", "command", "eval_command", "command_line")}
    _write(args, "mqar", settings, results)
    plt = _plot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for spec in args.patterns:
        rs = [r for r in results if r.pattern == spec]
        ax.plot(range(len(rs)), [r.accuracy for r in rs], marker="o", label=spec)
    ax.set_ylabel("accuracy")
    ax.set_xlabel("configuration")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.plot, dpi=110)
    print(f"results -> {args.json}, plot -> {args.plot}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    evaluate = sub.add_parser("eval", help="quality of attention patterns: perplexity, passkey, mqar")
    kinds = evaluate.add_subparsers(dest="eval_command", required=True)

    ppl = kinds.add_parser("perplexity", help="perplexity per pattern on Wikipedia lead sections")
    ppl.add_argument("--model", default="smollm2-135m")
    ppl.add_argument("--context", type=int, default=1024)
    ppl.add_argument("--windows", type=int, default=8, help="number of context-long windows scored")
    ppl.add_argument("--patterns", nargs="+", default=["dense", "window:256", "window:256+sinks:4",
                                                        "strided:block=64,local=4,stride=4", "power:local=128"])
    ppl.add_argument("--backend", default="auto")
    ppl.add_argument("--json", default="perplexity.json")
    ppl.add_argument("--plot", default="perplexity.png")
    ppl.set_defaults(run=run_perplexity)

    pk = kinds.add_parser("passkey", help="passkey retrieval over lengths and needle depths")
    pk.add_argument("--model", default="smollm2-135m")
    pk.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048])
    pk.add_argument("--depths", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75])
    pk.add_argument("--trials", type=int, default=3)
    pk.add_argument("--patterns", nargs="+", default=["dense", "window:256", "window:256+sinks:4"])
    pk.add_argument("--backend", default="auto")
    pk.add_argument("--json", default="passkey.json")
    pk.add_argument("--plot", default="passkey.png")
    pk.set_defaults(run=run_passkey)

    mq = kinds.add_parser("mqar", help="train small 2-layer models on multi-query associative recall")
    mq.add_argument("--patterns", nargs="+", default=["dense", "window:16"])
    mq.add_argument("--seq-lens", type=int, nargs="+", default=[64])
    mq.add_argument("--kv-pairs", type=int, nargs="+", default=[4])
    mq.add_argument("--d-models", type=int, nargs="+", default=[64])
    mq.add_argument("--vocab", type=int, default=256)
    mq.add_argument("--train", type=int, default=20000)
    mq.add_argument("--test", type=int, default=1000)
    mq.add_argument("--epochs", type=int, default=16)
    mq.add_argument("--batch-size", type=int, default=64)
    mq.add_argument("--lr", type=float, default=3e-3)
    mq.add_argument("--device", default=None)
    mq.add_argument("--json", default="mqar.json")
    mq.add_argument("--plot", default="mqar.png")
    mq.set_defaults(run=run_mqar)
