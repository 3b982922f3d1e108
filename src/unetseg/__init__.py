"""unetseg: U-Net semantic segmentation for street scenes."""

__version__ = "0.1.0"
