"""Pictures: the file is written, and its tile panel shows the three tile states."""

import pytest

from tessera.patterns import Strided, Window, Sinks, save_picture

pytest.importorskip("matplotlib")


def test_save_picture_writes_png(tmp_path):
    path = tmp_path / "window_sinks.png"
    save_picture(Window(40) | Sinks(4), 200, 300, path, block=32)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    save_picture(Strided(16, 2, 4), 128, 128, tmp_path / "strided.png", block=(16, 32), head=3)
    assert (tmp_path / "strided.png").stat().st_size > 5000


def test_save_picture_validates(tmp_path):
    with pytest.raises(ValueError, match="head"):
        save_picture(Window(4), 16, 16, tmp_path / "x.png", head=-1)
    with pytest.raises(TypeError, match="pattern"):
        save_picture("window:4", 16, 16, tmp_path / "x.png")
