"""unetseg: U-Net semantic segmentation for street scenes.

The Python API, in the order of a run::

    import unetseg

    run = unetseg.train("configs/camvid.yaml", out="runs/mine", overrides=["train.base_lr=3e-4"])
    scores = unetseg.evaluate(run.final_checkpoint, full_res=True)["metrics"]
    model = unetseg.load("runs/mine")  # a .pt, a model.safetensors, a run folder or an .onnx
    result = model.predict("street.jpg")  # .mask, .classes, .confidence, .color(), .save(...)

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
    "load": "unetseg.commands.api",
    "Model": "unetseg.commands.api",
    "Segmentation": "unetseg.commands.api",
    "train": "unetseg.commands.api",
    "evaluate": "unetseg.commands.evaluate",
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
_RENAMED = {"evaluate": "evaluate_checkpoint"}  # the API's name -> the module's
__all__ = ["__version__", *_WHERE]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'unetseg' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), _RENAMED.get(name, name))
