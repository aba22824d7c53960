"""The video ViT: VideoMAE's layout, timm's interface, and adaptable by ``inject``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adaptformer import AdapterConfig, count_parameters, inject, mark_trainable
from adaptformer.backbones.video import VIDEO_SIZES, VideoVisionTransformer, sinusoid_table
from adaptformer.backbones.video_weights import create_video_model


def tiny_video(**kwargs) -> VideoVisionTransformer:
    args = dict(img_size=32, patch_size=8, num_frames=4, embed_dim=48, depth=2, num_heads=4)
    return VideoVisionTransformer(**{**args, **kwargs}).eval()


def videomae_numpy_table(n_position: int, d_hid: int) -> np.ndarray:
    """VideoMAE's ``get_sinusoid_encoding_table``, verbatim in numpy."""

    def angles(position):
        return [position / np.power(10000, 2 * (j // 2) / d_hid) for j in range(d_hid)]

    table = np.array([angles(i) for i in range(n_position)])
    table[:, 0::2] = np.sin(table[:, 0::2])
    table[:, 1::2] = np.cos(table[:, 1::2])
    return table


def test_sinusoid_table_matches_videomae() -> None:
    ours = sinusoid_table(64, 48)[0]
    ref = torch.tensor(videomae_numpy_table(64, 48), dtype=torch.float32)
    assert torch.equal(ours, ref)


def test_shapes_pooling_and_fixed_positions() -> None:
    model = tiny_video(num_classes=5)
    x = torch.randn(2, 3, 4, 32, 32)
    tokens = model.forward_features(x)
    assert tokens.shape == (2, 2 * 4 * 4, 48)  # 2 time slots x 4 x 4 patches, no class token
    assert model(x).shape == (2, 5)
    assert model.forward_head(tokens, pre_logits=True).shape == (2, 48)
    assert "pos_embed" not in model.state_dict()  # a fixed buffer, as in VideoMAE checkpoints
    assert "pos_embed" not in dict(model.named_parameters())
    assert model.default_cfg["input_size"] == (3, 4, 32, 32)
    learned = tiny_video(pos_embed="learned")
    assert learned.pos_embed.requires_grad and "pos_embed" in learned.state_dict()


def test_class_token_is_repeated_per_time_slot() -> None:
    model = tiny_video(class_token=True, reg_tokens=2, global_pool="token", num_classes=3)
    assert model.num_prefix_tokens == 2 * 3  # (class + 2 registers) x 2 time slots
    tokens = model.forward_features(torch.randn(1, 3, 4, 32, 32))
    assert tokens.shape[1] == 6 + 32
    torch.testing.assert_close(tokens[:, 0], tokens[:, 3])  # the copies stay identical


def test_bad_input_and_options_raise() -> None:
    model = tiny_video()
    with pytest.raises(ValueError, match="num_frames"):
        model(torch.randn(1, 3, 8, 32, 32))
    with pytest.raises(ValueError, match="class_token"):
        tiny_video(global_pool="token")
    with pytest.raises(ValueError, match="unknown video model size"):
        create_video_model("tiny")


def test_named_sizes_match_videomae() -> None:
    model = create_video_model("vit_s", num_classes=0, num_frames=16)
    assert (model.embed_dim, len(model.blocks)) == (384, 12)
    assert model.patch_embed.proj.weight.shape == (384, 3, 2, 16, 16)
    # VideoMAE's ViT-S encoder, counted from its modules: tubelet conv, 12 blocks (q/v biases
    # only), fc_norm. Our fused qkv also holds the zero k bias (384 per block).
    d, h = 384, 1536
    block = 2 * 2 * d + 3 * d * d + 2 * d + d * d + d + d * h + h + h * d + d
    videomae = d * 3 * 2 * 16 * 16 + d + 12 * block + 2 * d
    assert videomae == 21_879_936
    assert sum(p.numel() for p in model.parameters()) == videomae + 12 * d
    assert VIDEO_SIZES["huge"] == {"embed_dim": 1280, "depth": 32, "num_heads": 16}


def test_inject_at_init_leaves_outputs_unchanged() -> None:
    model = tiny_video(num_classes=4, init_values=0.1)
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        before = model(x)
    inject(model, AdapterConfig(dropout=0.0), num_classes=None)
    counts = mark_trainable(model, "adaptformer")
    with torch.no_grad():
        after = model(x)
    assert torch.equal(before, after)
    assert counts.trainable == 2 * (2 * 48 * 64 + 64 + 48) + 4 * 48 + 4
    assert count_parameters(model).backbone == sum(
        p.numel() for n, p in model.named_parameters() if "adaptmlp" not in n and "head" not in n
    )


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    x = torch.randn(2, 3, 4, 32, 32)
    grads = []
    for enable in (False, True):
        torch.manual_seed(0)
        model = tiny_video(num_classes=3).train()
        model.set_grad_checkpointing(enable)
        model(x).sum().backward()
        grads.append(model.blocks[0].attn.qkv.weight.grad)
    torch.testing.assert_close(grads[0], grads[1])
