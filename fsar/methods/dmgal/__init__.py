"""DMGAL (dual motion-guided attention): S-MGA, the MLP mixer, C-MGA, adapters and the two methods.

Importing this package registers ``dmgal_ft`` and ``dmgal_adapter`` (end to end, see ``method``) and
``dmgal`` (the head on cached patch grids, see ``head``).
"""

from fsar.backbones.trunks import ResNetMaps, build_feature_maps
from fsar.methods.dmgal.adapters import CMGAAdapter, SMGAAdapter
from fsar.methods.dmgal.head import DMGALHead, DMGALHeadConfig
from fsar.methods.dmgal.method import DMGALFT, DMGALAdapter, DMGALAdapterConfig, DMGALFTConfig
from fsar.methods.dmgal.mixer import TimeChannelMixer
from fsar.methods.dmgal.motion import CMGA, SMGA, CrossMotionAttention, MotionTokens, SelfMotionAttention

__all__ = [
    "CMGA",
    "DMGALFT",
    "SMGA",
    "CMGAAdapter",
    "CrossMotionAttention",
    "DMGALAdapter",
    "DMGALAdapterConfig",
    "DMGALFTConfig",
    "DMGALHead",
    "DMGALHeadConfig",
    "MotionTokens",
    "ResNetMaps",
    "SMGAAdapter",
    "SelfMotionAttention",
    "TimeChannelMixer",
    "build_feature_maps",
]
