"""When the linear forwards run as one launch (``overlap.wanted``): switched on, equal lengths, and every
state program on its own multiprocessor."""

import pytest
import torch

pytest.importorskip("triton")

from tessera.linear.triton import overlap, tuning  # noqa: E402
from tessera.linear.triton.simple_gla import packed_chunks  # noqa: E402

CPU = torch.device("cpu")


def test_off_unless_switched_on_or_forced(monkeypatch):
    packed = packed_chunks(2, 256, 64, CPU)
    monkeypatch.setattr(overlap, "OVERLAP_FORWARD", False)
    assert not overlap.wanted("simple_gla.overlapped", packed, 16, 1, 128, CPU)
    monkeypatch.setitem(tuning.OVERRIDES, "simple_gla.overlapped", tuning.CANDIDATES["simple_gla.overlapped"][1])
    assert overlap.wanted("simple_gla.overlapped", packed, 16, 1, 128, CPU)
    assert not overlap.wanted("delta.overlapped", packed, 16, 1, 128, CPU)  # forcing is per kernel


def test_equal_lengths_and_one_state_program_per_multiprocessor(monkeypatch):
    monkeypatch.setattr(overlap, "OVERLAP_FORWARD", True)
    monkeypatch.setattr(overlap, "_multiprocessors", lambda device: 132)
    equal = packed_chunks(2, 256, 64, CPU)
    varlen = packed_chunks(1, 256, 64, CPU, torch.tensor([0, 100, 256], dtype=torch.int32))
    assert not overlap.wanted("simple_gla.overlapped", varlen, 16, 1, 128, CPU)
    # 2 sequences x 16 heads x 1 key block x 4 value blocks of 32 = 128 state programs <= 132.
    assert overlap.wanted("simple_gla.overlapped", equal, 16, 1, 128, CPU)
    assert not overlap.wanted("simple_gla.overlapped", equal, 16, 2, 128, CPU)   # 256 > 132
    assert not overlap.wanted("delta.overlapped", packed_chunks(4, 256, 64, CPU), 16, 1, 128, CPU)
