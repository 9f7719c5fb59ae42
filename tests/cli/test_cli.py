"""The `lathe` command line's own contract: help without arguments, checks that cannot pass by
printing."""

from __future__ import annotations

from pathlib import Path

from lathe.api.crd import crd_yaml
from lathe.cli import main


def test_no_arguments_prints_help_and_fails(capsys):
    assert main([]) == 2
    out = capsys.readouterr().out
    assert "usage: lathe" in out and "run" in out and "operator" in out


def test_check_without_a_file_fails_instead_of_printing(capsys):
    for cmd in ("crd", "reference"):
        assert main([cmd, "--check"]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""  # printing the text would read as a pass in a pipeline
        assert "-o PATH" in captured.err


def test_check_compares_with_the_file(tmp_path: Path, capsys):
    good = tmp_path / "crd.yaml"
    good.write_text(crd_yaml())
    assert main(["crd", "--check", "-o", str(good)]) == 0
    good.write_text(crd_yaml() + "# drift\n")
    assert main(["crd", "--check", "-o", str(good)]) == 1
    assert "out of date" in capsys.readouterr().err
