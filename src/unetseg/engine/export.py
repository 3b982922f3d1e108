"""ONNX export: a checkpoint's model as one self-contained .onnx file plus a JSON of its metadata.

The model takes float32 RGB images in [0, 1], ``images`` (N, 3, H, W), normalises them itself and
returns ``logits`` (N, C, H, W), already divided by its calibration temperature; batch, height and width are dynamic (height and width multiples
of the model's size factor, 16 or 32). The JSON beside it holds what inference needs besides the
weights: class set, size factor, training size.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.export import Dim

from unetseg.core.checkpoint import model_from_checkpoint, model_metadata
from unetseg.core.config import ConfigError
from unetseg.core.extras import require
from unetseg.core.files import atomic_path, write_json


def export_onnx(checkpoint: Path, output: Path, opset: int = 18) -> Path:
    """Export ``checkpoint``'s model to ``output`` (weights embedded) and write its JSON beside it.

    Returns ``output``. The JSON is ``output.with_suffix(".json")``.
    """
    if output.suffix != ".onnx":  # model.json beside it, never over it or over a checkpoint
        raise ConfigError(f"{output}: an ONNX file must end in .onnx (its metadata goes beside it)")
    if output.is_dir():
        raise ConfigError(f"{output}: is a folder; give the .onnx file to write")
    for module in ("onnx", "onnxscript"):  # what torch's exporter imports
        require(module, "onnx", "ONNX export")
    model, config, class_set = model_from_checkpoint(checkpoint)
    # torch.export proves every input side a multiple of the size factor (forward checks it),
    # so the dynamic sides are declared as the factor times an integer.
    factor = model.size_factor
    dynamic = {
        0: Dim("batch", min=1),
        2: factor * Dim("height_blocks", min=1),
        3: factor * Dim("width_blocks", min=1),
    }
    # Only the example's shape matters; distinct sides, so that the exporter cannot take
    # height == width (or a side of 1) for a rule of the graph.
    example = torch.zeros(2, 3, 4 * factor, 6 * factor)
    with atomic_path(output) as temporary:
        torch.onnx.export(
            model.eval(),
            (example,),
            str(temporary),
            input_names=["images"],
            output_names=["logits"],
            opset_version=opset,
            dynamic_shapes={"x": dynamic},
            external_data=False,  # one file: the weights inside, no side file
            dynamo=True,
            verbose=False,
        )
    write_json(output.with_suffix(".json"), model_metadata(model, config, class_set))
    return output
