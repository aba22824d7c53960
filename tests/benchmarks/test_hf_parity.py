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


def test_fp32_runs_go_to_their_own_folders():
    script = load_script("hf_parity")
    bf16, fp32 = (build_parser().parse_args(script.command("hf", Path("d"), Path("o"),
                  Path("f"), 0, p)[3:]) for p in ("bf16", "fp32"))  # fmt: skip
    assert (bf16.precision, fp32.precision) == ("bf16", "fp32")
    assert (bf16.output, fp32.output) == (str(Path("o/hf")), str(Path("o/hf-fp32")))


def test_render_reports_both_implementations_and_the_loss_difference():
    script = load_script("hf_parity")
    rows = [
        {
            "implementation": impl,
            "precision": "bf16",
            "seed": 0,
            "test_top1": top1,
            "train_loss": loss,
        }
        for impl, top1, loss in (("timm", 95.5, [1.0, 0.5]), ("hf", 95.25, [1.0, 0.5001]))
    ]
    rows.append({**rows[0], "precision": "fp32", "seed": 0})  # an unfinished pair
    check = {"max_abs_logit_diff": 0.0, "max_abs_logit": 1.1, "max_rel_grad_diff": 1e-6}
    text = script.render({
        "command": script.commands_of(rows),
        "machine": {"date": "2026-12-05", "cpu": "cpu", "cores": 2, "torch": "2"},
        "rows": rows,
        "preflight": {"images": 16, "bf16": check, "fp32": check},
    })  # fmt: skip
    assert "| bf16 | 0 | 95.50 | 95.25 | 0.0001 |" in text
    assert "| fp32 | 0 | 95.50 | - | - |" in text
    assert (
        "hf_parity.py --seeds 0; nice -n 19 python benchmarks/hf_parity.py --precision fp32" in text
    )
    assert "fp32: largest logit difference 0 " in text
