"""TransFuse networks: the model, its blocks, backbones, variants and the official-weight conversion."""

from .backbones import ViTEncoder, create_cnn_encoder, resize_pos_embed
from .blocks import AttentionGate, BiFusion, ConvBN, DoubleConv, Residual, SegmentationHead, Up
from .convert import convert_official_state_dict
from .sizes import SIZE_MULTIPLE, check_image_size, check_input_shape, padded_size
from .transfuse import TransFuse
from .variants import VARIANTS, TransFuseVariant

__all__ = [
    "TransFuse", "VARIANTS", "TransFuseVariant", "convert_official_state_dict",
    "SIZE_MULTIPLE", "padded_size", "check_image_size", "check_input_shape",
    "ViTEncoder", "create_cnn_encoder", "resize_pos_embed",
    "AttentionGate", "BiFusion", "ConvBN", "DoubleConv", "Residual", "SegmentationHead", "Up",
]
