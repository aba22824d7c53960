"""`adaptformer serve` on the command line: flags, the missing extra, bad settings."""

from __future__ import annotations

import importlib.util

import pytest

from adaptformer.cli import main


def test_help_lists_the_batching_flags(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--registry", "--max-batch-size", "--max-wait-ms", "--max-queue",
                 "--max-upload-mb", "--batching", "--admin-token-file", "--body-timeout",
                 "--min-upload-rate", "--max-uploads-per-client", "--allowed-hosts",
                 "--max-resident-tasks", "--adapter-memory", "--resident-wait",
                 "--load-threads"):  # fmt: skip
        assert flag in out


def test_without_the_extra_it_says_how_to_install_it(monkeypatch, capsys, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("uvicorn", "multipart") else real(name, *a),
    )
    assert main(["serve", "--registry", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "adaptformer: error: `adaptformer serve` needs uvicorn, python-multipart: "
        "pip install 'adaptformer[serve]'"
    )


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--max-batch-size", "0"], "--max-batch-size 0"),
        (["--max-wait-ms", "-1"], "--max-wait-ms -1.0"),
        (["--max-upload-mb", "0"], "--max-upload-mb 0.0"),
        (["--port", "70000"], "--port 70000"),
        (["--body-timeout", "0"], "--body-timeout 0.0"),
        (["--body-timeout", "inf"], "--body-timeout inf"),
        (["--min-upload-rate", "-1"], "--min-upload-rate -1.0"),
        (["--max-uploads-per-client", "-1"], "--max-uploads-per-client -1"),
        (["--allowed-hosts", "a.example,,b"], "--allowed-hosts 'a.example,,b'"),
        (["--max-resident-tasks", "-1"], "--max-resident-tasks -1"),
        (["--adapter-memory", "-2"], "--adapter-memory -2.0 (MiB >= 0)"),
        (["--adapter-memory", "nan"], "--adapter-memory nan"),
        (["--resident-wait", "-1"], "--resident-wait -1.0 (seconds >= 0)"),
        (["--load-threads", "0"], "--load-threads 0"),
    ],
)
def test_bad_settings_are_one_line_errors(capsys, tmp_path, flags, words):
    assert main(["serve", "--registry", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("adaptformer: error: invalid serve settings") and words in err


def test_an_empty_registry_is_refused(capsys, tmp_path):
    pytest.importorskip("starlette", reason="needs the serve extra")
    assert main(["serve", "--registry", str(tmp_path / "none")]) == 2
    assert "is empty: `adaptformer tasks add NAME RUN_DIR` first" in capsys.readouterr().err
