"""Data: dataset layouts -> datalists, the synthetic default dataset, reading, validation, mask transforms."""

from .datalist import (
    DATALIST_NAME,
    IMAGE_EXTENSIONS,
    VOLUME_EXTENSIONS,
    DatasetError,
    DatasetProblem,
    check_rank_split,
    evaluation_datalist,
    find_image_mask_pairs,
    find_images,
    inference_datalist,
    load_datalist,
    rank_shares,
    split_training,
    write_datalist,
)
from .readers import picture_converter, to_grey, to_mask, to_rgb
from .synthetic import make_synthetic_case, synthetic_dataset
from .transforms import (IMAGENET_MEAN_255, IMAGENET_STD_255, MaskToClassIdsd, ResizeToSourced, imagenet_mean_255,
                         imagenet_std_255)
from .validate import ScreenedImages, check_dataset, screen_images, validate_datalist

__all__ = [
    "DATALIST_NAME", "IMAGE_EXTENSIONS", "DatasetError", "evaluation_datalist", "find_image_mask_pairs",
    "find_images", "inference_datalist", "load_datalist", "split_training", "make_synthetic_case",
    "synthetic_dataset", "write_datalist", "IMAGENET_MEAN_255", "IMAGENET_STD_255", "MaskToClassIdsd", "ResizeToSourced",
    "VOLUME_EXTENSIONS", "DatasetProblem", "to_rgb", "to_mask", "ScreenedImages", "check_dataset", "screen_images",
    "validate_datalist", "check_rank_split", "rank_shares", "picture_converter", "to_grey", "imagenet_mean_255", "imagenet_std_255",
]
