import json

import pytest

import storyloom
from storyloom.cli import main
from storyloom.compare import parse_spec

SMALL = "hidden=32,embed=16,seq_len=16,batch_size=4,evals=2,precision=fp32"


def test_specs_parse_with_typed_values():
    assert parse_spec("default") == ("default", {})
    assert parse_spec("default:level=bpe,vocab_size=2000,tie=true,dropout=0.2") == (
        "default", {"level": "bpe", "vocab_size": 2000, "tie": True, "dropout": 0.2})
    assert parse_spec("word:val_files=a.txt+b.txt")[1] == {"val_files": ("a.txt", "b.txt")}


@pytest.mark.parametrize("spec, message", [("nope", "'nope' is not a preset"), ("default:hidden", "not key=value"),
                                           ("default:colour=red", "not key=value"), ("default:hidden=big", "is not a valid int"),
                                           ("default:tie=maybe", "is not a valid bool"), ("default:hidden=0", "--hidden must be")])
def test_bad_specs_are_refused_before_training(tmp_path, spec, message):
    with pytest.raises(storyloom.UserError, match=message):
        storyloom.compare.compare(["default", spec], out=tmp_path / "c", minutes=1)
    assert not (tmp_path / "c" / "runs").exists()


def test_compare_writes_its_table_and_plot(tmp_path, sonnets, capsys):
    (tmp_path / "s.txt").write_text(sonnets)
    out = tmp_path / "cmp"
    code = main(["compare", f"default:{SMALL}", f"bpe:{SMALL},vocab_size=300", f"word:{SMALL}", "--minutes", "0.03",
                 "--source", str(tmp_path / "s.txt"), "--out", str(out), "--threads", "1", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    report = (out / "report.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| `")]
    assert [r.split("|")[2].strip() for r in rows] == ["char", "bpe", "word"]
    assert report.count("300-character sample") == 3 and "storyloom compare default:" in report
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    for r in results:
        assert 0 < r["val_bpc"] < 10 and r["chars_per_s"] > 0 and len(r["sample"]) == 300
        assert r["val_chars"] == results[0]["val_chars"] or abs(r["val_chars"] - results[0]["val_chars"]) < 20
