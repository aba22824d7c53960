"""adaptformer.training.config: schedules that fit any run, and per-method default learning rates."""

from __future__ import annotations

import pytest

from adaptformer.training.config import DEFAULT_BLR, WARMUP_FRACTION, TrainConfig, read_yaml
from adaptformer.training.engine import Schedule
from adaptformer.training.runner import describe_schedule


def _per_step_lrs(cfg: TrainConfig, steps_per_epoch: int) -> list[float]:
    s = Schedule(cfg.peak_lr(32), cfg.min_lr, cfg.resolved_warmup_epochs, cfg.epochs)
    return [s(e + i / steps_per_epoch) for e in range(cfg.epochs) for i in range(steps_per_epoch)]


@pytest.mark.parametrize("epochs", [3, 10, 100])
def test_default_warmup_is_a_tenth_of_any_run_and_the_peak_is_reached(epochs):
    cfg = TrainConfig(epochs=epochs, method="adaptformer")
    assert cfg.resolved_warmup_epochs == pytest.approx(WARMUP_FRACTION * epochs)
    lrs = _per_step_lrs(cfg, steps_per_epoch=25)
    peak = cfg.peak_lr(32)
    assert max(lrs) == pytest.approx(peak, rel=0.05)
    # the peak comes within the first tenth of the steps, and the cosine ends near min_lr
    assert lrs.index(max(lrs)) <= 0.1 * len(lrs) + 1
    assert lrs[-1] < 0.01 * peak


@pytest.mark.parametrize("epochs", [3, 10, 100])
def test_explicit_lr_and_adamw_reach_their_peak(epochs):
    cfg = TrainConfig(epochs=epochs, optimizer="adamw", lr=1e-3)
    assert max(_per_step_lrs(cfg, 10)) == pytest.approx(1e-3, rel=0.1)


@pytest.mark.parametrize("warmup", [3, 3.0, 5])
def test_warmup_of_the_whole_run_is_refused_with_the_fix(warmup):
    with pytest.raises(ValueError, match=r"--warmup-epochs .* is not shorter than the run .* 0\.3"):
        TrainConfig(epochs=3, warmup_epochs=warmup)


def test_paper_recipe_keeps_its_exact_settings_and_refuses_a_shorter_run():
    values = read_yaml("paper_image")
    cfg = TrainConfig.from_dict(values)
    assert (cfg.optimizer, cfg.resolved_blr, cfg.resolved_warmup_epochs, cfg.epochs) == (
        "sgd", 0.1, 20.0, 100)  # fmt: skip
    assert cfg.peak_lr(1024) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="--warmup-epochs 20 is not shorter"):
        TrainConfig.from_dict({**values, "epochs": 10})


@pytest.mark.parametrize("method", sorted(DEFAULT_BLR["adamw"]))
def test_every_method_has_a_default_lr_per_optimizer_scaled_with_the_batch(method):
    cfg = TrainConfig(method=method)
    assert cfg.optimizer == "adamw" and cfg.blr is None
    assert cfg.peak_lr(512) == pytest.approx(2 * cfg.peak_lr(256))
    assert cfg.peak_lr(256) == DEFAULT_BLR["adamw"][method]
    assert TrainConfig(method=method, optimizer="sgd").resolved_blr == DEFAULT_BLR["sgd"][method]
    assert TrainConfig(method=method, blr=0.5).peak_lr(256) == 0.5  # --blr overrides
    assert TrainConfig(method=method, lr=0.25, blr=0.5).peak_lr(256) == 0.25  # --lr wins


def test_full_fine_tuning_gets_a_smaller_default_than_adapters():
    for opt in DEFAULT_BLR.values():
        assert opt["full"] < opt["adaptformer"]


def test_schedule_line_names_steps_warmup_peak_and_final_lr():
    cfg = TrainConfig(epochs=3, optimizer="adamw", lr=1e-3)
    s = Schedule(1e-3, 0.0, cfg.resolved_warmup_epochs, 3)
    line = describe_schedule(cfg, s, 32, 31)
    assert "93 optimizer steps (31 per epoch x 3 epochs)" in line
    assert "warm-up over 9 steps (0.3 epochs) to peak lr 0.001 (--lr)" in line
    assert "final lr 0" in line
    default = TrainConfig(epochs=3, method="full")
    line = describe_schedule(default, Schedule(default.peak_lr(32), 0, 0.3, 3), 32, 31)
    assert f"blr {DEFAULT_BLR['adamw']['full']:g} (default) x total batch 32 / 256" in line


def test_every_adapter_and_data_field_is_a_train_option_with_the_same_help():
    """Config is declared once: a field added to AdapterConfig or DataConfig is a CLI flag."""
    import dataclasses

    from adaptformer.adapters.config import AdapterConfig
    from adaptformer.cli import build_parser
    from adaptformer.data import DataConfig

    train = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for f in dataclasses.fields(AdapterConfig):
        name = "adapter_dropout" if f.name == "dropout" else f.name
        assert name in train, f"AdapterConfig.{f.name} cannot be set from the CLI"
        if name == f.name:
            assert train[name].metadata["help"] == f.metadata["help"]
    assert all(f.name in train for f in dataclasses.fields(DataConfig))
    text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for flag in ("--lora-alpha", "--layernorm", "--scale", "--prompt-mode", "--head-batchnorm"):
        assert flag in text


def test_adapter_knobs_reach_the_adapter_config():
    cfg = TrainConfig(method="lora", lora_alpha=8.0, layernorm="in", scale="learnable")
    a = cfg.adapter_config()
    assert (a.method, a.lora_alpha, a.layernorm, a.scale) == ("lora", 8.0, "in", "learnable")
    assert TrainConfig(scale="0.5").adapter_config().scale == 0.5  # old run folders: a string
    with pytest.raises(ValueError, match="scale"):
        TrainConfig(scale="fast")


# -- issue 24, item 12: config.yaml is type-checked and its sizes bounded when it is read --------


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("img_size: 100000", "img_size .*at most 1024"),
        ("img_size: abc", "img_size must be a whole number or empty, got .abc."),
        ("img_size: 1.5", "img_size must be a whole number"),
        ("model: 5", "model must be a string, got 5"),
        ("lr: fast", "lr must be a finite number or empty, got .fast."),
        ("min_lr: .nan", "min_lr must be a finite number"),
        ("layers: [1, a]", "layers must be a list of whole numbers"),
        ("strict_data: 'yes'", "strict_data must be true or false"),
        ("batch_size: 1000000000", "batch_size .*at most"),
        ("num_frames: 1000000", "num_frames .*at most"),
        ("test_clips: 100000", "test_clips .*at most"),
        ("prompt_tokens: 10000000", "prompt_tokens .*at most"),
        ("bottleneck: 1000000000", "bottleneck .*at most"),
        ("workers: 100000", "workers .*at most"),
        ("data_root: [a]", "data_root must be a string or empty"),
        ("augment: {a: 1}", "augment must be a string"),
    ],
)
def test_config_file_values_are_type_checked_and_bounded(tmp_path, text, words):
    path = tmp_path / "config.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ValueError, match=words) as err:
        TrainConfig.load(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_every_option_has_a_type_check():
    """A new option cannot slip past the schema: every field's annotation is understood."""
    from adaptformer.training.config import field_types

    assert set(field_types()) == {f for f in TrainConfig.__dataclass_fields__}


def test_train_names_the_config_file_of_a_bad_value(tmp_path, capsys):
    from adaptformer.cli import main

    path = tmp_path / "mine.yaml"
    path.write_text("img_size: 100000\n")
    assert main(["train", "--config", str(path), "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("adaptformer: error: img_size 100000 is too large: at most 1024")
    assert str(path) in err[-1] and len(err) == 1


def test_an_hf_folder_is_recorded_absolute(tmp_path, monkeypatch):
    """``--model hf:FOLDER`` is a path: runs record it absolute, so eval/serve find it anywhere."""
    monkeypatch.chdir(tmp_path)
    cfg = TrainConfig(model="hf:models/dinov2")
    assert cfg.model == f"hf:{tmp_path.resolve() / 'models' / 'dinov2'}"
    assert TrainConfig(model=cfg.model).model == cfg.model  # reloading changes nothing
    assert TrainConfig(model="vit_small_patch14_dinov2").model == "vit_small_patch14_dinov2"
