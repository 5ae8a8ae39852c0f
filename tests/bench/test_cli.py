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


def test_eval_mqar_writes_json_and_picture(tmp_path):
    out, png = tmp_path / "mqar.json", tmp_path / "mqar.png"
    assert main(["eval", "mqar", "--patterns", "dense", "window:4", "--seq-lens", "16", "--kv-pairs", "2",
                 "--d-models", "16", "--vocab", "64", "--train", "128", "--test", "32", "--epochs", "1",
                 "--device", "cpu", "--json", str(out), "--plot", str(png)]) == 0
    import json
    payload = json.loads(out.read_text())
    assert [r["pattern"] for r in payload["results"]] == ["dense", "window:4"]
    assert payload["command"].startswith("tessera eval mqar --patterns dense window:4") and png.stat().st_size > 1000
