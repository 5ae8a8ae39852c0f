"""The tessera command: info, show, errors that name the bad argument."""

import pytest

from tessera.cli import main


def test_info_lists_backends(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "reference" in out and "torch" in out


def test_show_writes_picture(tmp_path, capsys):
    out = tmp_path / "p.png"
    assert main(["show", "window:32+sinks:4", "--q-len", "256", "--block", "32", "--out", str(out)]) == 0
    assert out.stat().st_size > 1000
    assert "density" in capsys.readouterr().out


def test_show_bad_spec_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["show", "windwo:32"])
    assert exc.value.code == 2
    assert "windwo" in capsys.readouterr().err
