"""ONNX export: a checkpoint's model as one self-contained .onnx file plus a JSON of its metadata.

The model takes normalised float32 images ``images`` (N, 3, H, W) and returns ``logits``
(N, C, H, W); batch, height and width are dynamic (height and width multiples of 16). The JSON
beside it holds what inference needs besides the weights: class set, normalisation, training size.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.export import Dim

from unetseg.checkpoint import model_from_checkpoint, model_metadata
from unetseg.files import atomic_path, write_json
from unetseg.model import DOWNSAMPLING_FACTOR

# Only the shapes of the example matter; distinct sides so that the exporter cannot take
# height == width (or a side of 1) for a rule of the graph.
EXAMPLE_SHAPE = (2, 3, 4 * DOWNSAMPLING_FACTOR, 6 * DOWNSAMPLING_FACTOR)


def export_onnx(checkpoint: Path, output: Path, opset: int = 18) -> Path:
    """Export ``checkpoint``'s model to ``output`` (weights embedded) and write its JSON beside it.

    Returns ``output``. The JSON is ``output.with_suffix(".json")``.
    """
    model, config, class_set = model_from_checkpoint(checkpoint)
    # torch.export proves every input side a multiple of 16 (UNet.forward checks it), so the
    # dynamic sides are declared as 16 x an integer.
    dynamic = {
        0: Dim("batch", min=1),
        2: DOWNSAMPLING_FACTOR * Dim("height_16", min=1),
        3: DOWNSAMPLING_FACTOR * Dim("width_16", min=1),
    }
    with atomic_path(output) as temporary:
        torch.onnx.export(
            model.eval(),
            (torch.zeros(EXAMPLE_SHAPE),),
            str(temporary),
            input_names=["images"],
            output_names=["logits"],
            opset_version=opset,
            dynamic_shapes={"x": dynamic},
            external_data=False,  # one file: the weights inside, no side file
            dynamo=True,
            verbose=False,
        )
    write_json(output.with_suffix(".json"), model_metadata(config, class_set))
    return output
