"""Data: dataset layouts -> datalists, the synthetic default dataset, mask transforms."""

from .datalist import (
    DATALIST_NAME,
    IMAGE_EXTENSIONS,
    DatasetError,
    evaluation_datalist,
    find_image_mask_pairs,
    find_images,
    inference_datalist,
    load_datalist,
    split_training,
    write_datalist,
)
from .synthetic import make_synthetic_case, synthetic_dataset
from .transforms import IMAGENET_MEAN_255, IMAGENET_STD_255, MaskToClassIdsd

__all__ = [
    "DATALIST_NAME", "IMAGE_EXTENSIONS", "DatasetError", "evaluation_datalist", "find_image_mask_pairs",
    "find_images", "inference_datalist", "load_datalist", "split_training", "make_synthetic_case",
    "synthetic_dataset", "write_datalist", "IMAGENET_MEAN_255", "IMAGENET_STD_255", "MaskToClassIdsd",
]
