"""Fuzz: corrupted adapter files, configs and checkpoints give one-line errors, never crashes.

Seeded mutations (truncations, bit flips, garbage, wrong types, huge sizes) of a tiny real run
are fed to ``load_adapter`` and to ``tasks add``, ``eval``, ``predict`` and ``train --resume``.
Each case either works (a bit flip in a weight may still be a valid number) or fails with a
``ValueError``/``FileNotFoundError`` of one line (exit 2 on the command line) and leaves the
model, the registry and the run folder as they were. Anything else is a bug: the test fails
with its traceback.
"""

from __future__ import annotations

import json
import math
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import adaptformer as af
from adaptformer.cli import main

from .helpers import randomize_, tiny_vit
from .runs import cli_in_process, make_checkpoint, make_image_folder, train_args

CONFIG, WEIGHTS, CHECKPOINT = "adapter_config.json", "adapter_model.safetensors", "checkpoint.pt"
WRONG = [None, "2", "", [], {}, -1, 0, 10**9, 10**18, float("nan"), float("inf"), True, 1.5, [1]]


# -- mutations ----------------------------------------------------------------------------------


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    """Truncate, flip bits, overwrite a run with garbage, or empty the file."""
    kind = rng.choice(["truncate", "flip", "flip", "garbage", "empty", "header"])
    if kind == "truncate":
        return data[: rng.randrange(len(data))]
    if kind == "empty":
        return b""
    out = bytearray(data)
    if kind == "header":  # the first bytes hold the sizes: the most dangerous place
        for _ in range(rng.randint(1, 4)):
            out[rng.randrange(min(64, len(out)))] ^= 1 << rng.randrange(8)
    elif kind == "flip":
        for _ in range(rng.randint(1, 8)):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    else:
        at = rng.randrange(len(out))
        out[at : at + 64] = rng.randbytes(64)
    return bytes(out)


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path in a JSON-like tree."""
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            found += _paths(v, (*prefix, k))
    elif isinstance(value, list) and len(value) < 20:
        for i, v in enumerate(value):
            found += _paths(v, (*prefix, i))
    return found


def mutate_tree(tree: Any, rng: random.Random) -> Any:
    """A copy of ``tree`` with one value replaced by a wrong one, or one key deleted."""
    tree = json.loads(json.dumps(tree))
    path = rng.choice(_paths(tree))
    parent = tree
    for k in path[:-1]:
        parent = parent[k]
    if isinstance(parent, dict) and rng.random() < 0.25:
        del parent[path[-1]]
    else:
        parent[path[-1]] = rng.choice(WRONG)
    return tree


def damage(folder: Path, name: str, rng: random.Random) -> None:
    """Damage one file of ``folder``: JSON and YAML by value, anything else by bytes; now and
    then any of them nested deeper than a parser can recurse."""
    import yaml

    path = folder / name
    roll = rng.random()
    if roll < 0.1:
        plant(folder, name, rng.choice([DEEP, "{" * 50_000, DEEP_YAML]))
    elif name.endswith(".json") and roll < 0.7:
        path.write_text(json.dumps(mutate_tree(json.loads(path.read_text()), rng)))
    elif name.endswith(".yaml") and roll < 0.6:
        path.write_text(yaml.safe_dump(mutate_tree(yaml.safe_load(path.read_text()), rng)))
    else:
        path.write_bytes(mutate_bytes(path.read_bytes(), rng))


def damage_checkpoint(folder: Path, rng: random.Random) -> None:
    """Damage ``checkpoint.pt``: its bytes, or one value of the loaded tree (types, sizes)."""
    path = folder / CHECKPOINT
    if rng.random() < 0.5:
        path.write_bytes(mutate_bytes(path.read_bytes(), rng))
        return
    ckpt = torch.load(path, weights_only=True)
    keys = ["next_epoch", "history", "best", "task_state", "rng", "optimizer"]
    key = rng.choice(keys)
    if key == "task_state" and rng.random() < 0.6:
        name = rng.choice(sorted(ckpt[key]))
        t = ckpt[key][name]
        ckpt[key][name] = rng.choice(
            [t[:1], t.long(), t.fill_(math.nan), torch.zeros(3, 3), t.flatten()]
        )
    else:
        ckpt[key] = rng.choice([*WRONG, [{}], {"state": None}])
    torch.save(ckpt, path)


# -- checks -------------------------------------------------------------------------------------


def one_line_exit_2(code: int, err: str) -> bool:
    """Exit 0, or exit 2 with a single ``adaptformer: error:`` line; fails on anything else."""
    if code == 0:
        return False
    lines = err.strip().splitlines()
    assert code == 2, err
    assert lines[-1].startswith("adaptformer: error:") and "Traceback" not in err, err
    return True


def run_cli(capsys, *argv: Any) -> tuple[int, str]:
    code, _, err = cli_in_process(capsys, *argv)
    return code, err


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# -- load_adapter on a tiny model -----------------------------------------------------------------


@pytest.fixture(scope="module")
def adapters(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """Adapters of every kind saved from one tiny ViT, and that ViT's weights."""
    root = tmp_path_factory.mktemp("adapters")
    torch.manual_seed(0)
    model = tiny_vit(depth=2)
    backbone = {k: v.clone() for k, v in model.state_dict().items()}
    kinds = {
        "adaptformer": af.AdapterConfig(bottleneck=4),
        "lora": af.AdapterConfig(method="lora", bottleneck=2),
        "vpt": af.AdapterConfig(method="vpt", prompt_tokens=2),
        "linear": af.AdapterConfig(method="linear", head_batchnorm=True),
    }
    for name, cfg in kinds.items():
        af.inject(model, cfg, name=name, num_classes=3)
        randomize_(af.get_head(model, name))
        af.save_adapter(model, root / name, name)
    return root, backbone


def test_load_adapter_fuzz(adapters, tmp_path):
    root, backbone = adapters
    rng = random.Random(15)
    model = tiny_vit(depth=2)
    model.load_state_dict(backbone)
    af.load_adapter(model, root / "adaptformer", name="kept")  # an existing task must survive
    x = torch.randn(1, 3, 32, 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    failures = 0
    for case in range(300):
        kind = rng.choice(sorted(p.name for p in root.iterdir()))
        folder = tmp_path / str(case)
        shutil.copytree(root / kind, folder)
        damage(folder, rng.choice([CONFIG, WEIGHTS]), rng)
        try:
            af.load_adapter(model, folder, name="fuzz")
        except (ValueError, FileNotFoundError) as e:
            assert "\n" not in str(e), f"case {case}: {e}"
            failures += 1
            after = model.state_dict()
            assert after.keys() == before.keys(), f"case {case}: model changed"
            assert all(torch.equal(after[k], before[k]) for k in before), f"case {case}"
            assert model.adaptformer.active == "kept"
        else:  # a harmless flip: the task is there and answers with numbers
            af.delete_adapter(model, "fuzz")
            af.set_adapter(model, "kept")
        shutil.rmtree(folder)
    assert torch.isfinite(model(x)).all()
    assert failures > 200  # most damage is detected, not silently loaded


# -- the command line on a tiny real run --------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path]:
    """One finished 1-epoch run of a tiny timm ViT on 3 synthetic classes, and its data."""
    root = tmp_path_factory.mktemp("fuzzrun")
    data = make_image_folder(root / "data", train_per_class=4, test_per_class=1)
    ckpt = make_checkpoint(root / "vit.safetensors")
    out = root / "run"
    fast = ("--epochs", "1", "--warmup-epochs", "0", "--max-steps-per-epoch", "1")
    assert main(train_args(data, ckpt, out, *fast, "--bottleneck", "4")) == 0
    return out, data


def _cases(run: Path, tmp_path: Path, n: int, seed: int, hurt: Callable) -> Any:
    """``n`` damaged copies of ``run``, one at a time."""
    rng = random.Random(seed)
    for case in range(n):
        folder = tmp_path / f"case{case}"
        shutil.copytree(run, folder)
        hurt(folder, rng)
        yield case, folder
        shutil.rmtree(folder)


def test_tasks_add_fuzz(run, tmp_path, capsys):
    out, _ = run
    registry = tmp_path / "registry"
    assert run_cli(capsys, "tasks", "add", "good", out, "--registry", registry)[0] == 0
    index = (registry / "registry.json").read_text()

    def hurt(folder, rng):
        damage(folder, rng.choice([CONFIG, WEIGHTS, "config.yaml"]), rng)

    for case, folder in _cases(out, tmp_path, 80, 16, hurt):
        code, err = run_cli(capsys, "tasks", "add", f"t{case}", folder, "--registry", registry)
        if one_line_exit_2(code, err):
            assert (registry / "registry.json").read_text() == index, f"case {case}"
            assert not (registry / f"t{case}").exists()
        else:
            assert run_cli(capsys, "tasks", "remove", f"t{case}", "--registry", registry)[0] == 0


@pytest.mark.parametrize("command", ["eval", "predict"])
def test_eval_and_predict_fuzz(run, tmp_path, capsys, command):
    out, data = run
    image = next((data / "test").rglob("*.png"))

    def hurt(folder, rng):
        damage(folder, rng.choice([CONFIG, WEIGHTS, CONFIG, WEIGHTS, "config.yaml"]), rng)

    for _, folder in _cases(out, tmp_path, 25, 17 if command == "eval" else 18, hurt):
        if command == "eval":
            code, err = run_cli(capsys, "eval", "--run", folder, "--workers", "0")
        else:
            code, err = run_cli(capsys, "predict", "--run", folder, "--device", "cpu", image)
        one_line_exit_2(code, err)


def test_resume_fuzz(run, tmp_path, capsys):
    """A finished run resumed with a damaged checkpoint: one line, and its results untouched."""
    out, _ = run

    def hurt(folder, rng):
        (folder / "summary.json").unlink()
        damage_checkpoint(folder, rng)

    for _, folder in _cases(out, tmp_path, 20, 19, hurt):
        before = snapshot(folder)
        code, err = run_cli(capsys, "train", "--resume", "--output", folder, "--workers", "0")
        if one_line_exit_2(code, err):
            after = snapshot(folder)
            assert {k: v for k, v in after.items() if k != "metrics.jsonl"} == {
                k: v for k, v in before.items() if k != "metrics.jsonl"
            }


# -- issue 24: nesting, types and sizes, thin images, other decoders (items 11, 12, 2, 17) --------

DEEP = "[" * 200_000  # json.loads and yaml.safe_load raised RecursionError (exit 1)
DEEP_YAML = "".join(" " * i + "a:\n" for i in range(3000))  # block nesting, no brackets
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n%%EndComments\nshowpage\n%%EOF\n"


def plant(folder: Path, name: str, text: str) -> None:
    """Write ``text`` as file ``name``; a safetensors file gets it as its JSON header."""
    raw = text.encode()
    if name == WEIGHTS:
        raw = len(raw).to_bytes(8, "little") + raw
    (folder / name).write_bytes(raw)


def command(kind: str, folder: Path, image: Path, registry: Path) -> list[Any]:
    return {
        "tasks add": ["tasks", "add", "x", folder, "--registry", registry],
        "eval": ["eval", "--run", folder, "--workers", "0"],
        "predict": ["predict", "--run", folder, "--device", "cpu", image],
        "train --resume": ["train", "--resume", "--output", folder, "--workers", "0"],
    }[kind]


NESTED_CASES = [
    pytest.param(name, text, kind, id=f"{name}-{label}-{kind}")
    for name, text, label in ((CONFIG, DEEP, "["), (WEIGHTS, DEEP, "["),
                              ("config.yaml", DEEP, "["), ("config.yaml", DEEP_YAML, "block"))
    for kind in ("tasks add", "eval", "predict", "train --resume")
    if not (name != "config.yaml" and kind == "train --resume")  # resume reads no adapter file
]  # fmt: skip


@pytest.mark.parametrize(("name", "text", "kind"), NESTED_CASES)
def test_deep_nesting_in_run_files_is_one_line(run, tmp_path, capsys, name, text, kind):
    out, data = run
    folder = tmp_path / "run"
    shutil.copytree(out, folder)
    (folder / "summary.json").unlink()
    plant(folder, name, text)
    image = next((data / "test").rglob("*.png"))
    code, err = run_cli(capsys, *command(kind, folder, image, tmp_path / "registry"))
    assert one_line_exit_2(code, err) and "more than 64 deep" in err, err


def test_deep_nesting_in_the_registry_is_one_line(run, tmp_path, capsys):
    from .runs import run_cli as run_process

    out, data = run
    registry = tmp_path / "registry"
    assert run_cli(capsys, "tasks", "add", "good", out, "--registry", registry)[0] == 0
    plant(registry, "registry.json", DEEP)
    image = next((data / "test").rglob("*.png"))
    for argv in (
        ["tasks", "list", "--registry", registry],
        ["predict", "--tasks", "good", "--registry", registry, "--device", "cpu", image],
    ):
        code, err = run_cli(capsys, *argv)
        assert one_line_exit_2(code, err) and "more than 64 deep" in err, err
    # serve refuses before it binds a port; the timeout only guards against a hang
    done = run_process("serve", "--registry", str(registry), "--port", "0", timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "more than 64 deep" in done.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "line",
    [
        "img_size: 100000",  # asked torch for 78 GB of position embeddings and images
        "img_size: abc",
        "model: 5",
        "batch_size: 1000000000",
        "lr: fast",
        "min_lr: .nan",
        "layers: [0, x]",
        "epochs: 1.5",
    ],
)
def test_config_yaml_types_and_sizes_are_one_line(run, tmp_path, capsys, line):
    out, data = run
    folder = tmp_path / "run"
    shutil.copytree(out, folder)
    (folder / "summary.json").unlink()
    key = line.split(":")[0]
    kept = [x for x in (folder / "config.yaml").read_text().splitlines() if not x.startswith(key)]
    (folder / "config.yaml").write_text("\n".join([*kept, line]) + "\n")
    image = next((data / "test").rglob("*.png"))
    for kind in ("eval", "predict", "train --resume"):
        code, err = run_cli(capsys, *command(kind, folder, image, tmp_path / "registry"))
        assert one_line_exit_2(code, err) and key in err, (kind, err)


def test_checkpoint_values_of_the_wrong_type_or_shape_are_one_line(run, tmp_path, capsys):
    """Damage that passed the old structure check and crashed a resumed run later."""
    out, _ = run
    changes = [
        lambda c: c["best"].update(score="abc"),
        lambda c: c["best"].update(loss=[1]),
        lambda c: c["history"][0].update(train_loss=None),
        lambda c: c.update(scaler=[]),
        lambda c: next(iter(c["optimizer"]["state"].values())).update(exp_avg=torch.zeros(2)),
        lambda c: next(iter(c["optimizer"]["state"].values())).update(step="x"),
        lambda c: c["optimizer"].update(param_groups=[{"params": ["a"]}]),
    ]
    for case, change in enumerate(changes):
        folder = tmp_path / str(case)
        shutil.copytree(out, folder)
        (folder / "summary.json").unlink()
        ckpt = torch.load(folder / CHECKPOINT, weights_only=True)
        change(ckpt)
        torch.save(ckpt, folder / CHECKPOINT)
        before = snapshot(folder)
        code, err = run_cli(capsys, "train", "--resume", "--output", folder, "--workers", "0")
        assert one_line_exit_2(code, err), f"case {case}: {err}"
        assert snapshot(folder) == before, f"case {case}"


def _thin_png(path: Path, size: tuple[int, int]) -> Path:
    from PIL import Image

    Image.new("L", size).save(path)
    return path


def test_predict_refuses_thin_images_and_other_decoders(run, tmp_path, capsys, monkeypatch):
    from PIL import EpsImagePlugin

    def ghostscript(*args, **kwargs):
        raise AssertionError("Ghostscript was invoked")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", ghostscript)
    out, _ = run
    eps = tmp_path / "drawing.jpg"
    eps.write_bytes(EPS)
    for image, words in (
        (_thin_png(tmp_path / "thin.png", (1, 200_000)), "at most 20:1"),
        (_thin_png(tmp_path / "wide.png", (1_000_000, 1)), "at most 20:1"),
        (eps, "not a JPEG, PNG, WebP, GIF, BMP or TIFF"),
    ):
        code, err = run_cli(capsys, "predict", "--run", out, "--device", "cpu", image)
        assert one_line_exit_2(code, err) and words in err, err


def test_http_answers_untrusted_files_and_uploads_with_4xx_json(run, tmp_path, capsys, monkeypatch):
    """PUT of a run whose adapter_config.json nests '[' * 200000 deep, request bodies that do,
    and uploads that are thin or PostScript: a 4xx with a JSON error, and the served task keeps
    answering."""
    pytest.importorskip("httpx")
    from PIL import EpsImagePlugin
    from starlette.testclient import TestClient

    from adaptformer.serving.app import create_app
    from adaptformer.serving.catalog import Catalog

    def ghostscript(*args, **kwargs):
        raise AssertionError("Ghostscript was invoked")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", ghostscript)
    out, data = run
    registry = tmp_path / "registry"
    assert run_cli(capsys, "tasks", "add", "good", out, "--registry", registry)[0] == 0
    deep = tmp_path / "deep"
    shutil.copytree(out, deep)
    plant(deep, CONFIG, DEEP)
    auth = {"Authorization": "Bearer t0ken"}
    catalog = Catalog.from_registry(af.TaskRegistry(registry))
    good = next((data / "test").rglob("*.png")).read_bytes()
    thin = _thin_png(tmp_path / "thin.png", (1, 200_000)).read_bytes()
    with TestClient(create_app(catalog, admin_token="t0ken"), base_url="http://localhost") as client:
        answer = client.put("/v1/tasks/deep", json={"run": str(deep)}, headers=auth)
        assert 400 <= answer.status_code < 500 and "64 deep" in answer.json()["error"]
        for upload, words in ((thin, "at most 20:1"), (EPS, "not a JPEG")):
            answer = client.post("/v1/predict", files={"image": ("x.png", upload)})
            assert answer.status_code == 422 and words in answer.json()["error"], answer.text
        json_body = {"content-type": "application/json"}
        for answer in (
            client.post("/v1/predict", content=DEEP, headers=json_body),
            client.put("/v1/tasks/deep", content=DEEP, headers={**auth, **json_body}),
        ):
            assert answer.status_code == 400 and "malformed JSON" in answer.json()["error"]
        assert client.post("/v1/predict", files={"image": ("x.png", good)}).status_code == 200


# -- adapters that cannot load, overflowing weights, hostile requests (issue items 14-18) ----------


def _rewrite_weights(folder: Path, change: Callable[[dict[str, torch.Tensor]], None]) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / WEIGHTS)
    change(tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, folder / WEIGHTS)


WEIGHT_DAMAGE = {
    "an extra tensor": lambda t: t.update({"blocks.0.extra.weight": torch.zeros(2, 2)}),
    "a missing tensor": lambda t: t.pop(sorted(k for k in t if "up" in k)[0]),
    "an integer tensor": lambda t: t.update({k: v.to(torch.int32) for k, v in t.items()
                                             if "down" in k}),
    "weights of 1e38": lambda t: t.update({k: torch.full_like(v, 1e38) for k, v in t.items()
                                           if "head" in k}),
}


@pytest.mark.parametrize("damage_name", list(WEIGHT_DAMAGE))
def test_tasks_add_refuses_what_loading_would_refuse(run, tmp_path, capsys, damage_name):
    """`tasks add` checks exactly what loading checks; the registry stays byte-identical."""
    out, _ = run
    registry = tmp_path / "registry"
    assert run_cli(capsys, "tasks", "add", "good", out, "--registry", registry)[0] == 0
    before = (registry / "registry.json").read_bytes()
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    try:
        _rewrite_weights(bad, WEIGHT_DAMAGE[damage_name])
    except ValueError:  # safetensors itself refuses to write some damage: nothing to check
        pytest.skip(f"safetensors cannot write {damage_name}")
    code, err = run_cli(capsys, "tasks", "add", "bad", bad, "--registry", registry)
    assert one_line_exit_2(code, err), f"{damage_name} was accepted"
    reason = {"an extra tensor": "not in model", "a missing tensor": "missing from file",
              "an integer tensor": "not floating point", "weights of 1e38": "above 10000"}
    assert reason[damage_name] in err
    assert (registry / "registry.json").read_bytes() == before
    assert not (registry / "bad").exists()


def test_hostile_requests_get_4xx_json_and_base64_as_printed_works(run, tmp_path, capsys):
    """A 5,000-digit top_k, an unterminated multipart body and base64 as the `base64` tool
    prints it (line breaks, no padding stripped or kept): JSON answers, never a 500."""
    import base64

    pytest.importorskip("httpx")
    from starlette.testclient import TestClient

    from adaptformer.serving.app import create_app
    from adaptformer.serving.catalog import Catalog

    out, data = run
    registry = tmp_path / "registry"
    assert run_cli(capsys, "tasks", "add", "good", out, "--registry", registry)[0] == 0
    good = next((data / "test").rglob("*.png")).read_bytes()
    catalog = Catalog.from_registry(af.TaskRegistry(registry))
    with TestClient(create_app(catalog), base_url="http://localhost") as client:
        r = client.post("/v1/predict", files={"image": ("x.png", good)}, data={"top_k": "9" * 5000})
        assert r.status_code == 422 and "top_k" in r.json()["error"]
        boundary = "b0undary"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
                f"filename=\"x.png\"\r\nContent-Type: image/png\r\n\r\n").encode() + good[:50]
        r = client.post("/v1/predict", content=body,
                        headers={"content-type": f"multipart/form-data; boundary={boundary}"})
        assert r.status_code == 400 and "malformed" in r.json()["error"], r.text
        printed = base64.encodebytes(good).decode()  # 76-column lines, as `base64` prints
        for text in (printed, printed.replace("\n", "").rstrip("=")):
            r = client.post("/v1/predict", json={"images": [text]})
            assert r.status_code == 200, r.text
