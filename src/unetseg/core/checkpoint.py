"""Checkpoints: atomic, checksummed writes; safe loads; the model rebuilt from what a file holds.

Every load uses ``torch.load(weights_only=True)``, so a checkpoint from someone else cannot run code.
Each checkpoint ``X.pt`` gets a ``X.pt.sha256`` beside it, written after the checkpoint itself; resume
verifies it and falls back to the newest checkpoint that verifies and loads.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import re
import shutil
import sys
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unetseg.core.classes import ClassSet
from unetseg.core.config import Config, from_dict, normalisation
from unetseg.core.encoders import ENCODERS
from unetseg.core.files import atomic_path, sha256_of, write_text
from unetseg.core.model import DEFAULTED_KEYS, SegmentationNet, build_model

FORMAT = "unetseg-checkpoint-1"
# What an exported model takes (model.json's "input"): normalisation happens inside it.
MODEL_INPUT = "float32 RGB in [0, 1], (N, 3, H, W)"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the reason."""


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` atomically (temporary file, fsync, rename), then its checksum."""
    # A checksum of the file being replaced must not outlive it (a stop between the two writes).
    path.with_name(path.name + ".sha256").unlink(missing_ok=True)
    with atomic_path(path, fsync=True) as temporary:
        try:
            torch.save(state, temporary)
        except RuntimeError as error:  # how torch's archive writer reports a failed write
            raise _write_error(temporary, error) from None
    write_text(path.with_name(path.name + ".sha256"), sha256_of(path) + "\n")


def _write_error(path: Path, error: RuntimeError) -> OSError:
    """torch.save's failure as the OSError it is: a full disk, when the disk is full."""
    if shutil.disk_usage(path.parent).free < 1 << 20:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return OSError(errno.EIO, f"torch.save failed: {str(error).splitlines()[0]}", str(path))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load and verify a checkpoint; CheckpointError if it is missing, corrupt or foreign."""
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    _check_archive_header(path)
    checksum = path.with_name(path.name + ".sha256")
    if checksum.is_file():
        if checksum.read_text().strip() != sha256_of(path):
            raise CheckpointError(f"{path}: checksum mismatch (truncated or corrupted file)")
    else:  # no checksum beside it (copied alone, or killed before it was written): zip CRCs
        _check_archive_crcs(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # Not torch's text: it suggests weights_only=False, i.e. running the file's code.
        found = re.search(r"GLOBAL ([\w.]+)", str(error))
        what = f"it would import {found.group(1)}" if found else "it holds non-tensor objects"
        raise CheckpointError(
            f"{path}: refused to load: {what}; a checkpoint may hold only tensors and plain data"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint ({first})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a unetseg checkpoint (no {FORMAT!r} marker)")
    missing = [key for key in ("model", "config", "class_set") if key not in state]
    if missing:
        raise CheckpointError(f"{path}: incomplete checkpoint (no {', '.join(missing)})")
    _check_contents(path, state)
    return state


def _check_contents(path: Path, state: dict[str, Any]) -> None:
    """The parts every use of a checkpoint reads: weights, class table, weight average."""
    if not isinstance(state["model"], dict):
        raise CheckpointError(f"{path}: malformed checkpoint (its weights are not a state dict)")
    try:
        ClassSet.from_dict(state["class_set"])
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: malformed class table ({error})") from None
    average = state.get("ema") or {}
    if not isinstance(average, dict) or not isinstance(average.get("weights", {}), dict):
        raise CheckpointError(f"{path}: malformed weight average (ema)")


def _check_archive_header(path: Path) -> None:
    """torch.save writes a zip archive; anything else (JSON, a plain pickle) is not ours."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head != b"PK\x03\x04":
        what = "an empty file" if not head else "not a zip archive as torch.save writes"
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({what})")


def _check_archive_crcs(path: Path) -> None:
    """Every member's CRC (torch.load checks none: a flipped byte loads as a wrong weight)."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        raise CheckpointError(f"{path}: truncated or corrupted archive ({error})") from None
    if bad is not None:
        raise CheckpointError(f"{path}: corrupted archive (CRC mismatch in {bad})")


def checkpoint_paths(run_dir: Path) -> list[Path]:
    """The periodic checkpoints of a run, newest first."""
    return sorted((run_dir / "checkpoints").glob("step_*.pt"), reverse=True)


def latest_good_checkpoint(run_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint of a run that verifies and loads; reports and skips bad ones."""
    for path in checkpoint_paths(run_dir):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as error:
            print(f"warning: {error}; falling back to an older checkpoint", file=sys.stderr)
    return None


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP and torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def config_of(state: dict[str, Any]) -> Config:
    return from_dict(state["config"], source="checkpoint config")


def resolve_checkpoint(source: str | Path) -> Path:
    """The weights file a user means: a file as given, or in a run folder its ``best.pt``, else
    ``final.pt``, else ``model.safetensors``; CheckpointError naming what is missing."""
    path = Path(source)
    if not path.is_dir():
        return path
    for name in ("best.pt", "final.pt", "model.safetensors"):
        if (path / name).is_file():
            return path / name
    raise CheckpointError(f"{path}: a folder without best.pt, final.pt or model.safetensors")


def model_from_checkpoint(source: str | Path) -> tuple[SegmentationNet, Config, ClassSet]:
    """The trained model (eval mode, CPU; its weight average if it has one), configuration and
    class set, from a checkpoint, a run folder or a ``model.safetensors`` with its JSON."""
    path = resolve_checkpoint(source)
    if path.suffix == ".safetensors":
        return _model_from_safetensors(path)
    state = load_checkpoint(path)
    config, class_set = config_of(state), ClassSet.from_dict(state["class_set"])
    model = build_model(config, class_set.num_classes)
    average = state.get("ema") or {}  # the weight average is what a run evaluated and ships
    load_weights(model, average.get("weights", state["model"]), path)
    model.domain = state.get("domain")
    return model.eval(), config, class_set


def read_metadata(path: Path) -> tuple[dict[str, Any], Config, ClassSet]:
    """The JSON written beside exported weights (``model.safetensors``, an ``.onnx``), with the
    run's configuration and class set; CheckpointError naming the JSON if it is not that."""
    meta_path = path.with_suffix(".json")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        config = from_dict(meta["config"], source=str(meta_path))
        class_set = ClassSet.from_dict(meta["class_set"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise CheckpointError(
            f"{meta_path}: not the metadata written beside {path.name} ({error})"
        ) from None
    return meta, config, class_set


def _model_from_safetensors(path: Path) -> tuple[SegmentationNet, Config, ClassSet]:
    """Weights written by ``export_safetensors``, rebuilt from the ``model.json`` beside them."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    meta, config, class_set = read_metadata(path)
    try:
        weights = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path}: not readable safetensors ({error})") from None
    model = build_model(config, class_set.num_classes)
    load_weights(model, weights, path)
    model.domain = meta.get("domain")
    return model.eval(), config, class_set


def with_defaults(model: nn.Module, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``weights`` plus the model's own ``DEFAULTED_KEYS`` where they lack them (weights saved
    before models normalised their inputs, or were calibrated: the statistics the model was built
    with come from the same configuration)."""
    own = model.state_dict()
    return {**{k: own[k] for k in DEFAULTED_KEYS if k in own and k not in weights}, **weights}


def load_weights(model: nn.Module, weights: dict[str, torch.Tensor], path: Path) -> None:
    """Load a state dict, explaining a mismatch of class count or architecture in one line."""
    weights = with_defaults(model, weights)
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: architecture differs ({len(missing)} missing, {len(unexpected)} unexpected "
            f"tensors, e.g. {(missing or unexpected)[0]!r})"
        )
    for key, tensor in weights.items():
        if own[key].shape != tensor.shape:
            what = "class count" if key.startswith("head.") else "architecture"
            raise CheckpointError(
                f"{path}: {what} differs: {key} is {tuple(tensor.shape)} in the file, "
                f"{tuple(own[key].shape)} in the model"
            )
    model.load_state_dict(weights)


def export_safetensors(model: nn.Module, config: Config, class_set: ClassSet, path: Path) -> None:
    """The weights as ``model.safetensors`` plus a JSON of what is needed to use them."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in unwrap(model).state_dict().items()}
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary))
    meta = model_metadata(model, config, class_set)
    write_text(path.with_suffix(".json"), json.dumps(meta, indent=2) + "\n")


def model_metadata(model: nn.Module, config: Config, class_set: ClassSet) -> dict[str, Any]:
    """What a user of exported weights needs besides them: input, classes, normalisation, shape,
    the temperature the logits are already divided by, and the training data's domain profile."""
    mean, std = normalisation(config)
    domain = unwrap(model).domain
    return {
        "architecture": "unet",
        "model": config.to_dict()["model"],
        "config": config.to_dict(),  # the run's, so that evaluate finds its data again
        "input": MODEL_INPUT,
        "input_size": config.data.size,
        "size_factor": ENCODERS[config.model.encoder].size_factor,
        "normalisation": {"mean": mean, "std": std, "applied": "inside the model"},
        "class_set": class_set.to_dict(),
        "temperature": {"value": float(unwrap(model).temperature), "applied": "inside the model"},
        **({"domain": domain} if domain is not None else {}),
    }
