"""The logs of a run folder: ``log.jsonl`` and ``eval.jsonl`` rows, their curves, TensorBoard."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any

from unetseg.core.files import write_text
from unetseg.engine import viz
from unetseg.engine.report import read_jsonl


class RunLog:
    """``log.jsonl`` / ``eval.jsonl`` appenders, curve plots, and TensorBoard when installed."""

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.run_dir, self.enabled = run_dir, enabled
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:  # tensorboard is optional
                self.writer = None

    def append(self, name: str, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.run_dir / name, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(strict_json(row), allow_nan=False) + "\n")
        if self.writer is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key != "step" and math.isfinite(value):
                    self.writer.add_scalar(f"{Path(name).stem}/{key}", value, row["step"])

    def truncate(self, step: int) -> None:
        """Drop rows after ``step`` and lines torn by a kill: a resumed run logs those again."""
        for name in ("log.jsonl", "eval.jsonl"):
            path = self.run_dir / name
            if not self.enabled or not path.is_file():
                continue
            kept = []
            for line in path.read_text().splitlines():
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    if json.loads(line)["step"] <= step:
                        kept.append(line + "\n")
            write_text(path, "".join(kept))

    def rows(self, name: str) -> list[dict[str, Any]]:
        return read_jsonl(self.run_dir / name)

    def plot(self) -> None:
        """Refresh the loss and mIoU curves from the logs."""
        if not self.enabled:
            return
        train, evals = self.rows("log.jsonl"), self.rows("eval.jsonl")
        series = {
            "train loss": ([r["step"] for r in train], [r["loss"] for r in train]),
            "val loss": ([r["step"] for r in evals], [r["val_loss"] for r in evals]),
        }
        viz.plot_curves(series, self.run_dir / "curves_loss.png", "loss")
        viz.plot_curves(
            {"val mIoU": ([r["step"] for r in evals], [r["miou"] for r in evals])},
            self.run_dir / "curves_miou.png",
            "mIoU",
            ylim=(0.0, 1.0),
        )
        viz.plot_curves(
            {"learning rate": ([r["step"] for r in train], [r["lr"] for r in train])},
            self.run_dir / "curves_lr.png",
            "learning rate",
        )
        if evals and "iou" in evals[-1]:
            steps = [r["step"] for r in evals]
            per_class = {
                n: [_nan(r.get("iou", {}).get(n)) for r in evals] for n in evals[-1]["iou"]
            }
            viz.plot_class_curves(steps, per_class, self.run_dir / "curves_class_iou.png")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _nan(value: float | None) -> float:
    """A logged score as a number to plot (absent scores are written as null)."""
    return math.nan if value is None else value


def strict_json(value: Any) -> Any:
    """``value`` with NaN and infinities as None: JSON has no such numbers, and a strict reader
    (jq, JavaScript) rejects the ``NaN`` that Python would write."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(item) for item in value]
    return value
