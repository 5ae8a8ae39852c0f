"""Pictures of a pattern: its element mask beside its tile map (for ``tessera show`` and the docs)."""

from __future__ import annotations

import os

import torch

from .base import Pattern, _check_positive_int
from .tilemap import FULL, PARTIAL

# Tile-map colours: empty, partial, full.
_TILE_COLORS = ("#f4f4f4", "#f2a541", "#2a6f97")


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError("save_picture needs matplotlib: pip install 'tessera[bench]' "
                          "(or pip install matplotlib)") from None
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


def save_picture(pattern: Pattern, q_len: int, k_len: int, path: str | os.PathLike,
                 block: int | tuple[int, int] = 64, head: int = 0) -> None:
    """Save a PNG (or any format matplotlib infers from ``path``) of ``pattern`` for one head.

    Left: the element mask ``[q_len, k_len]`` (query rows down, keys across; allowed pairs dark).
    Right: the tile map for ``block`` (an int or ``(block_m, block_n)``) tiles, empty / partial /
    full in three colours, titled with the pattern's density and the tile counts.
    Materializes the ``q_len x k_len`` mask: meant for picture-sized problems.
    """
    if not isinstance(pattern, Pattern):
        raise TypeError(f"pattern must be a tessera Pattern, got {type(pattern).__name__}")
    _check_positive_int("q_len", q_len)
    _check_positive_int("k_len", k_len)
    block_m, block_n = block if isinstance(block, tuple) else (block, block)
    _check_positive_int("block", block_m)
    _check_positive_int("block", block_n)
    _check_positive_int("head", head, minimum=0)
    plt = _pyplot()
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    heads = head + 1
    mask = pattern.dense_mask(q_len, k_len, heads)[head]
    states = pattern.tile_states(q_len, k_len, block_m, block_n, heads)[head]
    n_full = int((states == FULL).sum())
    n_partial = int((states == PARTIAL).sum())
    n_tiles = states.numel()
    density = mask.double().mean().item()

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 5.2))
    left.imshow(mask.numpy(), cmap="Greys", vmin=0, vmax=1, interpolation="nearest", aspect="auto")
    left.set_title(f"mask {q_len}x{k_len}, density {density:.3f}")
    left.set_xlabel("key")
    left.set_ylabel("query row")
    right.imshow(states.numpy(), cmap=ListedColormap(_TILE_COLORS), vmin=0, vmax=2,
                 interpolation="nearest", aspect="auto")
    right.set_title(f"tiles {block_m}x{block_n}: {n_full} full, {n_partial} partial, "
                    f"{n_tiles - n_full - n_partial} empty of {n_tiles}")
    right.set_xlabel("key tile")
    right.set_ylabel("query tile")
    right.legend(handles=[Patch(color=c, label=s) for c, s in zip(_TILE_COLORS, ("empty", "partial", "full"))],
                 loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3, fontsize=8)
    fig.suptitle(f"{pattern!r}  (head {head})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
