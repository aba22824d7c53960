"""`adaptformer predict`: folders of images and `--tasks all`, as `serve` takes it."""

from __future__ import annotations

import json

from .test_tasks import cli, trained  # noqa: F401  (trained is a fixture)


def test_predict_takes_a_folder_and_all_tasks(trained, capsys):  # noqa: F811
    root, data, runs = trained
    folder = data / "test" / "class_0"
    code, out, _ = cli(capsys, "predict", "--run", str(runs["a"]), str(folder), "--json")
    assert code == 0
    files = [json.loads(line)["file"] for line in out.splitlines()]
    assert files == sorted(str(p) for p in folder.iterdir()) and len(files) == 2

    reg = str(root / "registry-all")
    for name, run in runs.items():
        assert cli(capsys, "tasks", "add", name, str(run), "--registry", reg)[0] == 0
    code, out, _ = cli(capsys, "predict", "--tasks", "all", "--registry", reg, str(folder),
                       "--json")  # fmt: skip
    assert code == 0
    assert [sorted(json.loads(line)["tasks"]) for line in out.splitlines()] == [["a", "b"]] * 2


def test_a_folder_without_images_is_one_line(trained, capsys, tmp_path):  # noqa: F811
    _, _, runs = trained
    (tmp_path / "notes.txt").write_text("x")
    code, _, err = cli(capsys, "predict", "--run", str(runs["a"]), str(tmp_path))
    assert code == 2 and f"folder {tmp_path} holds no image files" in err
