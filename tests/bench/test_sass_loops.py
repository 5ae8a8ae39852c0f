"""``hopper_compile.sass_loops`` on hand-written nvdisasm-style text: innermost loops only,
opcodes without predicates and modifiers."""

from tessera.bench.hopper_compile import sass_loops

SASS = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
.L_x_0:
        /*0010*/                   IADD3 R2, R2, 0x1, RZ ;
.L_x_1:
        /*0020*/                   FADD R3, R3, R4 ;
        /*0030*/              @!P0 FADD.FTZ R3, R3, R5 ;
        /*0040*/                   ISETP.GE.AND P0, PT, R3, R6, PT ;
        /*0050*/              @P0 BRA `(.L_x_1) ;
        /*0060*/                   HGMMA.64x64x16.F32.BF16 R8, gdesc[UR4], RZ ;
        /*0070*/              @P1 BRA `(.L_x_0) ;
        /*0080*/                   BRA `(.L_x_2) ;
.L_x_2:
        /*0090*/                   EXIT ;
"""


def test_innermost_loops_and_their_opcodes():
    (label, start, end, ops), = sass_loops(SASS)
    assert (label, start, end) == (".L_x_1", 2, 5)
    assert ops == {"FADD": 2, "ISETP": 1, "BRA": 1}
