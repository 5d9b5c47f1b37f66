"""The systems the paper compares TransFuse with, built on TransFuse's own blocks: TransUNet and MedT.

They run on the bundle's pipeline through the overlays ``configs/networks/*.json`` for the model comparison
(:mod:`transfuse_bundle.tools.comparison`); no packaged bundle ships them."""

from .medt import MedT
from .transunet import TransUNet

__all__ = ["MedT", "TransUNet"]
