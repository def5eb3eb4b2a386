"""Pure geometry functions and robust estimators."""

from .estimators import (
    RansacConf,
    estimate_essential,
    estimate_fundamental,
    estimate_homography,
    estimate_relative_pose,
)
from .pose import Pose

__all__ = [
    "Pose",
    "RansacConf",
    "estimate_homography",
    "estimate_fundamental",
    "estimate_essential",
    "estimate_relative_pose",
]
