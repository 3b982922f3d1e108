"""unetseg: U-Net semantic segmentation for street scenes.

The Python API, in the order of a run::

    import unetseg

    config = unetseg.load_config("configs/camvid.yaml", ["train.base_lr=3e-4"])
    result = unetseg.train(config, Path("runs/mine"))
    unetseg.evaluate_checkpoint(result.final_checkpoint, full_res=True)
    predictor = unetseg.Predictor.from_checkpoint(result.final_checkpoint)
    mask = unetseg.predict_image(predictor, rgb)  # (H, W, 3) uint8 -> (H, W) class ids

Names are imported on first use, so that ``import unetseg`` (and the command line) stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_WHERE = {
    "Config": "unetseg.core.config",
    "ConfigError": "unetseg.core.config",
    "load_config": "unetseg.core.config",
    "load_class_set": "unetseg.core.classes",
    "build_model": "unetseg.core.model",
    "UNet": "unetseg.core.model",
    "ResUNet": "unetseg.core.model",
    "LiteUNet": "unetseg.core.model",
    "model_from_checkpoint": "unetseg.core.checkpoint",
    "train": "unetseg.engine.train",
    "Trainer": "unetseg.engine.train",
    "Predictor": "unetseg.engine.inference",
    "predict_image": "unetseg.engine.inference",
    "segment": "unetseg.engine.inference",
    "Prediction": "unetseg.engine.inference",
    "as_rgb": "unetseg.engine.inference",
    "export_onnx": "unetseg.engine.export",
    "evaluate_checkpoint": "unetseg.commands.evaluate",
    "calibrate_checkpoint": "unetseg.commands.evaluate",
    "predict_paths": "unetseg.commands.predict",
}
__all__ = ["__version__", *_WHERE]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'unetseg' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
