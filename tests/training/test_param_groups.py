"""Parameter groups: layer-wise lr decay and the new-parameter multiplier give each parameter the
learning rate the flags say, for full fine-tuning and adapters, and survive config and resume."""

from __future__ import annotations

import logging

import pytest
import torch

from adaptformer import AdapterConfig, inject, mark_trainable
from adaptformer.backbones.video import VideoVisionTransformer
from adaptformer.training import runner
from adaptformer.training.config import TrainConfig
from adaptformer.training.engine import Schedule, train_one_epoch
from adaptformer.training.param_groups import fresh_reach_warning
from adaptformer.training.runner import make_optimizer

from ..helpers import tiny_vit
from ..runs import make_checkpoint, make_image_folder, train_args

LR, DECAY, NEW = 1e-3, 0.5, 10.0


def _lr_of(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> dict[str, float]:
    """Each trainable parameter's learning rate in ``optimizer``, by name (each exactly once)."""
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    n = sum(len(g["params"]) for g in optimizer.param_groups)
    assert n == len(group_of), "a parameter sits in two groups"
    return {k: group_of[id(p)]["lr"] for k, p in model.named_parameters() if id(p) in group_of}


def _expected_block_lr(name: str, depth: int) -> float | None:
    if name.startswith("blocks."):
        return LR * DECAY ** (depth - int(name.split(".")[1]))
    return None


def _cfg(method: str, **kwargs) -> TrainConfig:
    return TrainConfig(method=method, lr=LR, weight_decay=0.05, **kwargs)


def test_full_fine_tuning_gets_mae_layer_decay_and_the_new_head_multiplier():
    model = tiny_vit(depth=4)
    inject(model, AdapterConfig(method="full"), name="t", num_classes=3)
    mark_trainable(model, "full")
    opt = make_optimizer(_cfg("full", layer_decay=DECAY, new_params_lr_scale=NEW), model, LR)
    lrs = _lr_of(opt, model)
    assert set(lrs) == {k for k, p in model.named_parameters() if p.requires_grad}
    for name, lr in lrs.items():
        if name.startswith("head."):
            expected = LR * NEW  # new: the multiplier, no decay
        elif name.split(".")[0] in ("cls_token", "pos_embed", "patch_embed"):
            expected = LR * DECAY**5  # embeddings: depth + 1 steps down
        elif name.startswith("norm."):
            expected = LR  # after the last block
        else:
            expected = _expected_block_lr(name, 4)
        assert lr == pytest.approx(expected), name
    assert lrs["blocks.3.mlp.fc1.weight"] == pytest.approx(LR * DECAY)  # last block: one step
    for group in opt.param_groups:  # weight decay on matrices only, whatever the lr
        assert group["weight_decay"] == (0.05 if group["params"][0].ndim >= 2 else 0.0)
        assert all((p.ndim >= 2) == (group["weight_decay"] > 0) for p in group["params"])


@pytest.mark.parametrize("method", ["adaptformer", "lora", "vpt"])
def test_adapter_tensors_get_their_blocks_decay_and_only_the_head_the_multiplier(method):
    model = tiny_vit(depth=4)
    inject(model, AdapterConfig(method=method), name="t", num_classes=3)
    mark_trainable(model, method)
    opt = make_optimizer(_cfg(method, layer_decay=DECAY, new_params_lr_scale=NEW), model, LR)
    lrs = _lr_of(opt, model)
    assert lrs, "nothing trains"
    assert not any(k.startswith(("patch_embed", "norm.", "pos_embed")) for k in lrs)  # frozen
    for name, lr in lrs.items():
        expected = LR * NEW if name.startswith("head.") else _expected_block_lr(name, 4)
        assert expected is not None, f"{name}: an adapter tensor outside a block"
        assert lr == pytest.approx(expected), name
    # every block's adapter trains, so every depth step is present
    assert {round(lr / LR, 6) for n, lr in lrs.items() if n.startswith("blocks.")} == {
        round(DECAY**k, 6) for k in range(1, 5)
    }


def test_an_inflated_video_models_time_embed_is_new():
    model = VideoVisionTransformer(img_size=32, patch_size=8, num_frames=4, embed_dim=48, depth=2,
                                   num_heads=4, temporal_embed=True)  # fmt: skip
    model.fresh_parameter_names = ("time_embed",)
    inject(model, AdapterConfig(method="adaptformer"), name="t", num_classes=3)
    mark_trainable(model, "adaptformer")
    opt = make_optimizer(_cfg("adaptformer", new_params_lr_scale=NEW), model, LR)
    lrs = _lr_of(opt, model)
    assert lrs["time_embed"] == pytest.approx(LR * NEW)
    assert lrs["head.weight"] == pytest.approx(LR * NEW)
    adapters = {k: v for k, v in lrs.items() if k.startswith("blocks.")}
    assert adapters and all(v == pytest.approx(LR) for v in adapters.values())  # method's lr


def test_defaults_keep_one_lr_and_the_two_weight_decay_groups_older_checkpoints_hold():
    model = tiny_vit(depth=2)
    inject(model, AdapterConfig(method="full"), name="t", num_classes=3)
    mark_trainable(model, "full")
    opt = make_optimizer(_cfg("full"), model, LR)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    assert all(g["lr"] == LR and g["lr_scale"] == 1.0 for g in opt.param_groups)


def test_the_engine_applies_each_groups_multiplier_to_the_scheduled_lr():
    model = tiny_vit(depth=2, num_classes=3)
    inject(model, AdapterConfig(method="full"), name="t", num_classes=3)
    mark_trainable(model, "full")
    opt = make_optimizer(_cfg("full", layer_decay=DECAY, new_params_lr_scale=NEW), model, LR)
    loader = [(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))]
    schedule = Schedule(0.02, 0.0, 0, 1)  # no warm-up: step 0 runs at the peak 0.02
    row = train_one_epoch(model, loader, opt, schedule, 0, torch.device("cpu"), progress=False)
    assert row["lr"] == pytest.approx(0.02)  # the logged lr is the base schedule's
    lrs = _lr_of(opt, model)
    assert lrs["head.weight"] == pytest.approx(0.02 * NEW)
    assert lrs["blocks.0.attn.qkv.weight"] == pytest.approx(0.02 * DECAY**2)
    assert lrs["patch_embed.proj.weight"] == pytest.approx(0.02 * DECAY**3)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"layer_decay": 0.0}, "--layer-decay must be in (0, 1]"),
        ({"layer_decay": 1.5}, "--layer-decay must be in (0, 1]"),
        ({"new_params_lr_scale": 0.0}, "--new-params-lr-scale must be positive"),
        ({"new_params_lr_scale": -2.0}, "--new-params-lr-scale must be positive"),
    ],
)
def test_bad_values_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("]", r"\]")):
        TrainConfig(**kwargs)


def test_flags_round_trip_through_config_and_resume(tmp_path, monkeypatch, caplog):
    """The flags reach config.yaml, the schedule line and the optimizer; a resumed run keeps
    them (from the saved config and its checkpoint's groups)."""
    from adaptformer.cli import build_parser
    from adaptformer.cli.train import config_from_args

    data = make_image_folder(tmp_path / "data", train_per_class=4, test_per_class=2)
    ckpt = make_checkpoint(tmp_path / "vit.safetensors")
    out = tmp_path / "run"
    argv = train_args(data, ckpt, out, "--method", "full", "--epochs", "2",
                      "--layer-decay", "0.75", "--new-params-lr-scale", "8")  # fmt: skip
    cfg = config_from_args(build_parser().parse_args(argv))
    assert (cfg.layer_decay, cfg.new_params_lr_scale) == (0.75, 8.0)

    built: list[torch.optim.Optimizer] = []
    real_make, real_save = runner.make_optimizer, runner._save_checkpoint

    def recording_make(*args, **kwargs):
        built.append(real_make(*args, **kwargs))
        return built[-1]

    def save_then_stop(run, *args, **kwargs):  # a run killed right after its first checkpoint
        real_save(run, *args, **kwargs)
        raise RuntimeError("killed after the first checkpoint")

    monkeypatch.setattr(runner, "make_optimizer", recording_make)
    monkeypatch.setattr(runner, "_save_checkpoint", save_then_stop)
    with pytest.raises(RuntimeError, match="killed"):
        runner.fit(cfg, progress=False)
    saved = TrainConfig.load(out / "config.yaml")
    assert (saved.layer_decay, saved.new_params_lr_scale) == (0.75, 8.0)
    first_scales = [g["lr_scale"] for g in built[0].param_groups]

    monkeypatch.setattr(runner, "_save_checkpoint", real_save)
    resume_cfg = TrainConfig(output=str(out), workers=0)  # flags absent: the saved ones count
    with caplog.at_level(logging.INFO, logger="adaptformer.training.runner"):
        summary = runner.fit(resume_cfg, resume=True, progress=False)
    assert summary["epochs"] == 2
    assert any("at epoch 2/2" in r.getMessage() for r in caplog.records)  # resumed, not redone
    resumed = built[-1]
    assert [g["lr_scale"] for g in resumed.param_groups] == first_scales
    assert len(set(first_scales)) > 3  # decay steps, embeddings and the head multiplier
    assert 8.0 in first_scales and pytest.approx(0.75**13) in first_scales  # head, embeddings
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("schedule"))
    assert "layer decay 0.75 (embeddings x0.0238, block 0 x0.0317" in line
    assert "new parameters (head.weight, head.bias) x8" in line


def _video_model(method: str) -> VideoVisionTransformer:
    model = VideoVisionTransformer(img_size=32, patch_size=8, num_frames=4, embed_dim=48, depth=2,
                                   num_heads=4, temporal_embed=True)  # fmt: skip
    model.fresh_parameter_names = ("time_embed",)
    inject(model, AdapterConfig(method=method), name="t", num_classes=3)
    mark_trainable(model, method)
    return model


def test_a_zero_time_embed_the_schedule_cannot_move_is_warned_about():
    # docs/video.md's full fine-tuning at its defaults: peak 2.5e-5, 30 warm-up steps of 300
    schedule = Schedule(2.5e-5, 0.0, 0.4, 4)
    model = _video_model("full")
    warning = fresh_reach_warning(model, "adamw", 1.0, schedule, 75, 4)
    assert warning is not None and warning.startswith("time_embed starts at zero")
    assert "0.0037 over this whole run at x1" in warning and "--new-params-lr-scale" in warning
    # what learned there: x10 and above; SGD has no such bound
    assert fresh_reach_warning(model, "adamw", 10.0, schedule, 75, 4) is None
    assert fresh_reach_warning(model, "sgd", 1.0, schedule, 75, 4) is None
    with torch.no_grad():  # a resumed run's time_embed has moved: nothing to warn about
        model.time_embed.add_(0.1)
    assert fresh_reach_warning(model, "adamw", 1.0, schedule, 75, 4) is None
    # image models have no fresh tensor; adapters' own learning rate moves time_embed
    image = tiny_vit(depth=2)
    inject(image, AdapterConfig(method="full"), name="t", num_classes=3)
    mark_trainable(image, "full")
    assert fresh_reach_warning(image, "adamw", 1.0, schedule, 75, 4) is None
    adapted = _video_model("adaptformer")
    adapter_lr = Schedule(3e-3, 0.0, 0.4, 4)
    assert fresh_reach_warning(adapted, "adamw", 1.0, adapter_lr, 75, 4) is None
