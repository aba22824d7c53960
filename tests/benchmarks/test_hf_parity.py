"""benchmarks/hf_parity.py: both implementations get the same valid vtab command but the backbone
source, and the results section reports what the runs wrote."""

from __future__ import annotations

from pathlib import Path

from adaptformer.cli import build_parser

from .conftest import load_script


def test_the_two_commands_differ_only_in_the_backbone():
    script = load_script("hf_parity")
    timm, hf = (script.command(impl, Path("d"), Path("o"), Path("hf_dir"), 1)
                for impl in ("timm", "hf"))  # fmt: skip
    a, b = (build_parser().parse_args(cmd[3:]) for cmd in (timm, hf))
    assert a.command == b.command == "vtab" and a.seeds == b.seeds == [1]
    assert (a.model, b.model) == ("vit_small_patch14_dinov2", "hf:hf_dir")
    assert a.checkpoint.endswith(".safetensors") and getattr(b, "checkpoint", None) is None
    same = {k: v for k, v in vars(a).items() if k not in ("model", "checkpoint", "output", "func")}
    assert same == {k: v for k, v in vars(b).items() if k in same}
    assert a.img_size == 112 and a.epochs == 6 and a.lr_grid == [1.0]


def test_render_reports_both_implementations_and_the_loss_difference():
    script = load_script("hf_parity")
    rows = [{"implementation": impl, "seed": 0, "test_top1": top1, "train_loss": loss}
            for impl, top1, loss in (("timm", 95.5, [1.0, 0.5]), ("hf", 95.25, [1.0, 0.5001]))]  # fmt: skip
    text = script.render({
        "command": "nice -n 19 python benchmarks/hf_parity.py",
        "machine": {"date": "2026-12-05", "cpu": "cpu", "cores": 2, "torch": "2"},
        "rows": rows,
        "preflight": {"max_abs_logit_diff": 0.0, "images": 16, "max_abs_logit": 1.1},
    })  # fmt: skip
    assert "| timm | 95.50 |" in text and "| hf | 95.25 |" in text
    assert "training-loss difference 0.0001" in text and "largest logit difference 0" in text
