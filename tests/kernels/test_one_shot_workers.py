"""``one_shot_workers.rewrite`` on the shape of PTX Triton 3.6 gives a one-region warp-specialized
kernel: the workers' wait loop, their partitions, and the default partition around the region."""

import pytest

from tessera.kernels.gluon import one_shot_workers

KERNEL = """\
.visible .entry _kernel(
)
.reqntid 384
.maxnreg 168
{
	@%p1 bra 	$L__BB0_9;
	bra.uni 	$L__BB0_1;
$L__BB0_9:
	setmaxnreg.inc.sync.aligned.u32 	256;
	st.shared.v2.b32 	[global_smem+16], {0, 16843009};
	barrier.sync 	1;
	setmaxnreg.dec.sync.aligned.u32 	168;
	barrier.sync 	1;
	wgmma.fence.sync.aligned;
	barrier.sync 	1;
	setmaxnreg.inc.sync.aligned.u32 	256;
$L__tmp7:
	.loc	1 128 4
	st.shared.v2.b32 	[global_smem+16], {33686018, 33686018};
	barrier.sync 	1;
	bra.uni 	$L__BB0_8;
$L__BB0_4:
	barrier.sync 	1;
	setmaxnreg.dec.sync.aligned.u32 	120;
$L__BB0_1:
	// worker wait loop
	setmaxnreg.dec.sync.aligned.u32 	120;
	barrier.sync 	1;
	ld.shared.b8 	%rs1, [%r3+16];
	setp.eq.b16 	%p2, %rs1, 0;
	@%p2 bra 	$L__BB0_5;
	setp.eq.b16 	%p3, %rs1, 2;
	@%p3 bra 	$L__BB0_8;
	bra.uni 	$L__BB0_1;
$L__BB0_5:
	setmaxnreg.inc.sync.aligned.u32 	168;
	barrier.sync 	1;
	wgmma.fence.sync.aligned;
	@%p4 bra 	$L__BB0_4;
	barrier.sync 	1;
	setmaxnreg.dec.sync.aligned.u32 	120;
	bra.uni 	$L__BB0_1;
$L__BB0_8:
	ret;
}
"""


def _instructions(ptx):
    return [line.strip() for line in ptx.split("\n") if line.strip()]


def test_workers_leave_after_their_partition():
    out = one_shot_workers.rewrite(KERNEL)
    lines = _instructions(out)
    # The wait keeps its lowering; both returns to it become the release barrier and ret.
    assert lines.count("setmaxnreg.dec.sync.aligned.u32 \t120;") == 1
    wait = lines.index("$L__BB0_1:")
    assert lines[wait + 2] == "setmaxnreg.dec.sync.aligned.u32 \t120;"
    for label in ("$L__BB0_4:", "$L__BB0_5:"):
        start = lines.index(label)
        block = lines[start:start + 9]
        assert "barrier.sync \t1;" in block and "ret;" in block
        ret_at = block.index("ret;")
        assert block[ret_at - 2:ret_at] == ["barrier.sync \t1;", "barrier.sync \t1;"]
    # The default partition keeps its first raise and drops the one after the region's join.
    assert lines.count("setmaxnreg.inc.sync.aligned.u32 \t256;") == 1
    assert lines.index("setmaxnreg.inc.sync.aligned.u32 \t256;") == lines.index("$L__BB0_9:") + 1
    # Nothing else moves: the rewrite only replaces lines.
    assert len(out.split("\n")) == len(KERNEL.split("\n")) + 2


def test_other_shapes_are_refused():
    without_wait = KERNEL.replace("\t// worker wait loop\n\tsetmaxnreg.dec.sync.aligned.u32 \t120;\n", "")
    with pytest.raises(ValueError, match="no worker wait loop"):
        one_shot_workers.rewrite(without_wait)
    unjoined = KERNEL.replace("\t@%p4 bra \t$L__BB0_4;\n\tbarrier.sync \t1;\n", "\t@%p4 bra \t$L__BB0_4;\n")
    with pytest.raises(ValueError, match="without its join"):
        one_shot_workers.rewrite(unjoined)
    with pytest.raises(ValueError, match="no worker wait loop"):
        one_shot_workers.rewrite(".visible .entry _plain(\n)\n{\n\tret;\n}\n")


def test_the_hook_rewrites_marked_kernels_only():
    from triton import knobs

    stages = {"ptx": lambda src, metadata: src}
    knobs.runtime.add_stages_inspection_hook(None, stages, None, None, 90)
    assert stages["ptx"](KERNEL, {}) == KERNEL
    one_shot_workers.register("_kernel")
    try:
        assert stages["ptx"](KERNEL, {}) == one_shot_workers.rewrite(KERNEL)
    finally:
        one_shot_workers._MARKED.discard("_kernel")
