"""`adaptformer predict`: folders of images and `--tasks all`, as `serve` takes it."""

from __future__ import annotations

import json

from ..runs import cli_in_process as cli
from .test_tasks import trained  # noqa: F401  (trained is a fixture)


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


def test_a_run_at_another_image_size_is_refused_for_its_size(trained, capsys):  # noqa: F811
    """The same backbone file at another --img-size has other weights (resampled position
    embeddings): the refusal names the size, not only two sha256 prefixes."""
    import shutil

    root, _, runs = trained
    reg = str(root / "registry-size")
    assert cli(capsys, "tasks", "add", "a", str(runs["a"]), "--registry", reg)[0] == 0
    other = root / "at64"
    shutil.copytree(runs["b"], other, dirs_exist_ok=True)
    config = json.loads((other / "adapter_config.json").read_text())
    config["metadata"].update(img_size=64, backbone_sha256="1" * 64)  # as a 64-px run has
    (other / "adapter_config.json").write_text(json.dumps(config))
    code, _, err = cli(capsys, "tasks", "add", "b64", str(other), "--registry", reg)
    assert code == 2
    assert "it was trained at --img-size 64" in err and "train it again with --img-size 32" in err
