"""The ``tessera`` command: ``info``, ``show PATTERN``, ``bench``, ``eval``."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


def _cmd_info(args) -> int:
    import platform

    import torch
    from rich.console import Console
    from rich.table import Table

    import tessera
    from tessera.bench.environment import triton_version
    from tessera.kernels.registry import available_backends

    table = Table(title="tessera", show_header=False)
    table.add_row("tessera", tessera.__version__)
    table.add_row("python", platform.python_version())
    table.add_row("torch", torch.__version__)
    table.add_row("triton", triton_version() or "not installed")
    cuda = torch.cuda.is_available()
    table.add_row("cuda", torch.version.cuda or "-" if cuda else "not available")
    for i in range(torch.cuda.device_count() if cuda else 0):
        props = torch.cuda.get_device_properties(i)
        table.add_row(f"device {i}", f"{props.name}, {props.total_memory / 2**30:.0f} GiB, "
                                     f"sm_{props.major}{props.minor}, {props.multi_processor_count} SMs")
    table.add_row("backends", ", ".join(available_backends()))
    Console().print(table)
    return 0


def _cmd_show(args) -> int:
    from tessera.patterns import parse
    from tessera.patterns.render import save_picture

    pattern = parse(args.pattern)
    k_len = args.k_len or args.q_len
    save_picture(pattern, args.q_len, k_len, args.out, block=args.block, head=args.head)
    tiles = pattern.tile_map(args.q_len, k_len, args.block, args.block, num_heads=args.head + 1)
    print(f"{pattern!r}: density {pattern.density(args.q_len, k_len):.4f}, "
          f"tile density {tiles.tile_density():.4f}, full tiles {tiles.full_fraction():.2%} -> {args.out}")
    return 0


def _cmd_bench(args) -> int:
    import torch

    from tessera.bench.attention import run_suite
    from tessera.bench.report import print_table, save_plot, write_results

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu":
        print("no GPU: running the small CPU suite (reference backend vs SDPA, float32)")
    records = run_suite(device)
    payload = write_results(Path(args.json), device, records)
    print_table(payload)
    if args.plot:
        save_plot(payload, Path(args.plot))
    print(f"results -> {args.json}" + (f", plot -> {args.plot}" if args.plot else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tessera", description="Efficient attention, one API.")
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="devices, backends and versions")
    info.set_defaults(run=_cmd_info)

    show = sub.add_parser("show", help="draw a pattern's mask and tile map")
    show.add_argument("pattern", help="a pattern spec, e.g. 'window:256+sinks:4' (see README)")
    show.add_argument("--out", default="pattern.png", help="PNG to write (default: pattern.png)")
    show.add_argument("--q-len", type=int, default=1024, help="query length (default 1024)")
    show.add_argument("--k-len", type=int, default=None, help="key length (default: the query length)")
    show.add_argument("--block", type=int, default=64, help="tile size (default 64)")
    show.add_argument("--head", type=int, default=0, help="head to draw (default 0)")
    show.set_defaults(run=_cmd_show)

    bench = sub.add_parser("bench", help="side-by-side attention benchmark (GPU suite, or a small CPU suite)")
    bench.add_argument("--json", default="tessera-bench.json", help="results file (default tessera-bench.json)")
    bench.add_argument("--plot", default="tessera-bench.png", help="PNG chart (default tessera-bench.png; '' for none)")
    bench.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    bench.set_defaults(run=_cmd_bench)

    from tessera.eval.commands import add_parsers
    add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.command_line = "tessera " + shlex.join(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError) as exc:
        parser.error(str(exc))


if __name__ == "__main__":
    sys.exit(main())
