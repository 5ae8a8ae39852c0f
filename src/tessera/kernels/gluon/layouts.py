"""Register layouts of Hopper wgmma products, shared by the Gluon kernels of this package."""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl


@gluon.constexpr_function
def wgmma_accumulator(warps, columns):
    """Layout of a wgmma accumulator (float32) with ``columns`` columns and its rows spread over
    ``warps`` warps: 64 rows per warpgroup, one ``m64 n<columns> k16`` instruction shape."""
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[warps, 1],
                                     instr_shape=[16, columns, 16])


@gluon.constexpr_function
def wgmma_register_operand(accumulator):
    """Layout of a 16-bit A operand held in registers for a product into ``accumulator``'s
    layout (P in P @ V, dS in dS @ K, and the like)."""
    return gl.DotOperandLayout(operand_index=0, parent=accumulator, k_width=2)
