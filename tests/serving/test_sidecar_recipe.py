"""An exported model used with nothing but its sidecar: PIL + numpy + onnxruntime, no
adaptformer import, gives `predict`'s answers on real photos (the preprocessing travels)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from PIL import Image

from adaptformer.cli import main

from ..runs import make_checkpoint, make_image_folder, train_args

# What a user outside Python's adaptformer writes from the sidecar's "preprocess" steps.
STANDALONE = textwrap.dedent('''
    import json, sys
    import numpy as np
    import onnxruntime as ort
    from PIL import Image

    sidecar = json.load(open(sys.argv[1]))
    steps = {s["op"]: s for s in sidecar["preprocess"]["steps"]}
    session = ort.InferenceSession(sys.argv[2], providers=["CPUExecutionProvider"])
    classes = next(iter(sidecar["classes"].values()))
    filters = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}
    rows = []
    for path in sys.argv[3:]:
        img = Image.open(path).convert(steps["convert"]["mode"])
        r = steps["resize_shorter_side"]
        w, h = img.size
        size = (r["size"], int(r["size"] * h / w)) if w <= h else (int(r["size"] * w / h), r["size"])
        img = img.resize(size, filters[r["interpolation"]])
        ch, cw = steps["center_crop"]["size"]
        top, left = round((img.height - ch) / 2), round((img.width - cw) / 2)
        img = img.crop((left, top, left + cw, top + ch))
        x = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) * steps["to_float"]["scale"]
        n = steps["normalize"]
        x = (x - np.array(n["mean"], np.float32)[:, None, None]) / np.array(n["std"], np.float32)[:, None, None]
        logits = session.run(None, {"image": x[None].astype(np.float32)})[0][0]
        p = np.exp(logits - logits.max()); p /= p.sum()
        top = np.argsort(-p)[:3]
        rows.append({"file": path, "top": [[classes[i], round(float(p[i]), 4)] for i in top]})
    assert "adaptformer" not in sys.modules and "torch" not in sys.modules
    print(json.dumps(rows))
''')


@pytest.mark.shared
def test_the_sidecar_recipe_alone_reproduces_predict_on_real_photos(
    tmp_path, imagenette_root, capsys
):
    pytest.importorskip("onnxruntime")
    data = make_image_folder(tmp_path / "data")
    ckpt = make_checkpoint(tmp_path / "vit.safetensors")
    run = tmp_path / "run"
    assert main(train_args(data, ckpt, run, "--epochs", "1", "--max-steps-per-epoch", "2",
                           "--warmup-epochs", "0")) == 0  # fmt: skip
    assert main(["export", "--run", str(run), "--format", "onnx", "--out", str(run / "m.onnx")]) == 0
    photos = sorted((imagenette_root / "val").rglob("*.jpg"))[::400][:3]
    assert len(photos) == 3
    # Real photos at shapes that exercise the resize of the longer side and the crop rounding.
    odd = []
    for i, (w, h) in enumerate([(157, 120), (91, 160)]):
        path = tmp_path / f"odd{i}.png"
        Image.open(photos[i]).convert("RGB").crop((0, 0, w, h)).save(path)
        odd.append(path)
    files = [str(p) for p in [*photos, *odd]]

    import adaptformer as af
    from adaptformer.adapters.files import read_adapter_files
    from adaptformer.data import build_eval_transform

    meta = read_adapter_files(run)[0]["metadata"]
    predicts = build_eval_transform(32, meta["mean"], meta["std"], meta["interpolation"])
    img = Image.open(odd[0])
    assert af.transforms(run)(img).equal(predicts(img))  # the Python helper is predict's

    capsys.readouterr()
    assert main(["predict", "--run", str(run), "--json", "--top-k", "3", *files]) == 0
    expected = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    script = tmp_path / "standalone.py"
    script.write_text(STANDALONE)
    r = subprocess.run([sys.executable, "-I", str(script), str(run / "m.onnx.json"),
                        str(run / "m.onnx"), *files],
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout)
    for want, have in zip(expected, got, strict=True):
        assert [c for c, _ in want["top"]] == [c for c, _ in have["top"]]
        assert [p for _, p in want["top"]] == pytest.approx([p for _, p in have["top"]], abs=2e-4)
