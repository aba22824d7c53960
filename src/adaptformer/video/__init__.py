"""Video recognition: a VideoMAE-compatible video ViT, its checkpoints, data and multi-view eval.

AdaptFormer's video experiments (https://arxiv.org/abs/2205.13535) adapt a VideoMAE backbone
(https://arxiv.org/abs/2203.12602). The model here is built from timm's ``Block``, so
``adaptformer.inject`` adapts it unchanged; image ViTs can be inflated into it. PyAV (the
``[video]`` extra) is needed only to decode video files, and is imported on first use.
"""

from .checkpoints import (
    LoadReport,
    inflate_image_state_dict,
    is_video_state_dict,
    load_videomae_checkpoint,
    video_model_from_image,
)
from .datasets import (
    SkippedVideo,
    VideoDataSplits,
    VideoListDataset,
    VideoRecord,
    build_video_datasets,
    collate_videos,
    read_video_list,
)
from .evaluate import VideoScores, average_views, evaluate_multiview, gather_rows, video_metrics
from .model import VIDEO_SIZES, VideoVisionTransformer, create_video_model

__all__ = [
    "VIDEO_SIZES",
    "LoadReport",
    "SkippedVideo",
    "VideoDataSplits",
    "VideoListDataset",
    "VideoRecord",
    "VideoScores",
    "VideoVisionTransformer",
    "average_views",
    "build_video_datasets",
    "collate_videos",
    "create_video_model",
    "evaluate_multiview",
    "gather_rows",
    "inflate_image_state_dict",
    "is_video_state_dict",
    "load_videomae_checkpoint",
    "read_video_list",
    "video_metrics",
    "video_model_from_image",
]
