"""The single-file HTML run report: sections, embedded images, escaping, and a real render."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unetseg.engine.report import pick_snapshots, write_report

SECTION_IDS = [
    "summary", "config", "curves", "per-class", "confusion", "calibration", "snapshots", "predictions"
]  # fmt: skip
CHROMIUM = Path("/usr/bin/chromium")


class _Collector(HTMLParser):
    """Section ids, image sources and the text of each tag name seen."""

    def __init__(self) -> None:
        super().__init__()
        self.section_ids: list[str] = []
        self.img_srcs: list[str] = []
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        values = dict(attrs)
        if tag == "section":
            self.section_ids.append(values.get("id") or "")
        if tag == "img":
            self.img_srcs.append(values.get("src") or "")

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(path: Path) -> _Collector:
    collector = _Collector()
    collector.feed(path.read_text(encoding="utf-8"))
    collector.close()
    return collector


def _image(path: Path, size: tuple[int, int] = (40, 20), seed: int = 0) -> None:
    """A small image with some structure (a gradient plus a seed-dependent colour block)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.linear_gradient("L").resize(size).convert("RGB")
    image.paste((seed * 40 % 256, 90, 200), (0, 0, size[0] // 2, size[1] // 2))
    image.save(path)


def _metrics(step: int | None = None) -> dict:
    metrics = {
        "miou": 0.5,
        "mean_dice": 0.6,
        "fwiou": 0.7,
        "pixel_accuracy": 0.8,
        "absent_classes": ["sky"],
        "per_class": {
            "road": {"iou": 0.75, "dice": 0.85, "accuracy": 0.9, "gt_pixels": 12345},
            "car": {"iou": 0.25, "dice": 0.4, "accuracy": 0.3, "gt_pixels": 100},
            "sky": {"iou": None, "dice": None, "accuracy": None, "gt_pixels": 0},
        },
    }
    if step is not None:
        metrics.update(step=step, split="val")
    return metrics


@pytest.fixture
def fake_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(
        "data:\n  root: <script>alert(1)</script>\ntrain:\n  seed: 0\n"
    )
    (run / "metrics.json").write_text(json.dumps(_metrics(step=20)))
    rows = [
        {"step": 10, "val_loss": 1.0, "miou": 0.3125, "mean_dice": 0.4},
        {"step": 20, "val_loss": 0.8, "miou": 0.4375, "mean_dice": 0.5, "elapsed_s": 150.0},
    ]
    (run / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for i, name in enumerate(
        ["curves_lr.png", "curves_loss.png", "curves_miou.png", "curves_class_iou.png"]
    ):
        _image(run / name, seed=i)
    for step in (10, 20):
        _image(run / "snapshots" / f"step_{step:07d}.png", seed=step)
    evaluation = run / "evaluation"
    evaluation.mkdir()
    calibration = {"temperature": 1.5, "ece_before": 0.0812, "ece_after": 0.0123}
    (evaluation / "metrics.json").write_text(json.dumps({**_metrics(), "calibration": calibration}))
    _image(evaluation / "confusion_matrix.png", seed=5)
    _image(evaluation / "reliability.png", seed=7)
    _image(evaluation / "worst_01_miou_0.100.png", seed=6)
    return run


def test_report_has_every_section_and_embedded_images(fake_run: Path, tmp_path: Path) -> None:
    predictions = tmp_path / "predictions"
    (predictions / "city").mkdir(parents=True)  # predict keeps the input's sub-folders
    Image.new("RGB", (16, 8), (10, 200, 30)).save(predictions / "city" / "a_overlay.jpg")
    Image.new("RGB", (16, 8), (10, 200, 30)).save(predictions / "city" / "a_color.png")
    path = write_report(fake_run, {"predictions": predictions})
    assert path == fake_run / "report.html"
    page = _parse(path)
    assert page.section_ids == SECTION_IDS
    # 4 curves, confusion, reliability, 2 snapshots, worst, overlay (no per_class_iou.png)
    assert len(page.img_srcs) == 10
    for src in page.img_srcs:
        assert src.startswith(("data:image/png;base64,", "data:image/jpeg;base64,"))
        image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        image.load()
        assert image.format in {"PNG", "JPEG"}
    assert "script" not in page.tags  # the config's <script> is text, not markup
    text = "".join(page.text)
    assert "<script>alert(1)</script>" in text
    assert "&lt;script&gt;" in path.read_text(encoding="utf-8")
    assert "n/a" in text  # the NaN-as-null class
    assert "0.4375 at step 20, after 2.5 min of training" in text  # the best row of eval.jsonl
    assert "0.5000" in text and "12,345" in text
    assert "temperature 1.5000; expected calibration error 0.0812 without it, 0.0123" in text
    assert "not available yet" not in text


def test_report_of_a_bare_run_says_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("train:\n  seed: 0\n")
    page = _parse(write_report(tmp_path))
    assert page.section_ids == SECTION_IDS
    assert page.img_srcs == []
    text = "".join(page.text)
    assert "seed: 0" in text
    assert text.count("not available yet") >= len(SECTION_IDS) - 2  # summary and config have data


def test_report_tolerates_a_half_written_log(fake_run: Path) -> None:
    with open(fake_run / "eval.jsonl", "a") as handle:
        handle.write('{"step": 30, "mi')
    (fake_run / "metrics.json").write_text("{")
    text = "".join(_parse(write_report(fake_run)).text)
    assert "0.4375" in text
    assert "final metrics (metrics.json): not available yet" in text


def test_unknown_extra_section_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown extra section"):
        write_report(tmp_path, {"prediction": tmp_path})


def test_pick_snapshots_keeps_the_first_and_the_newest() -> None:
    paths = [Path(f"step_{s:07d}.png") for s in (1000, 200, 300, 400, 500, 600, 700, 800, 900)]
    chosen = [int(p.stem.split("_")[1]) for p in pick_snapshots(paths, limit=4)]
    assert chosen == [200, 800, 900, 1000]


def test_report_renders_in_headless_chromium(fake_run: Path, tmp_path: Path) -> None:
    if not CHROMIUM.is_file():
        pytest.skip("chromium not installed")
    from unetseg.engine import viz

    # real matplotlib charts, as a run has them, so the render has many colours to show
    viz.plot_curves(
        {"train loss": ([1, 2, 3], [1.0, 0.7, 0.5])}, fake_run / "curves_loss.png", "loss"
    )
    matrix = np.array([[50, 5, 0], [10, 30, 2], [0, 0, 0]])
    viz.plot_confusion(
        matrix, ["road", "car", "sky"], fake_run / "evaluation" / "confusion_matrix.png"
    )
    report = write_report(fake_run)
    profile, shot = tmp_path / "profile", tmp_path / "shot.png"
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        f"--screenshot={shot}",
        "--window-size=1200,3000",
        report.resolve().as_uri(),
    ]
    subprocess.run(command, check=True, timeout=60, capture_output=True)
    with Image.open(shot) as image:
        assert image.format == "PNG"
        assert image.size == (1200, 3000)
        colours = image.convert("RGB").getcolors(maxcolors=1_000_000)
    assert colours is not None and len(colours) > 300, "the page rendered (nearly) flat"
    shutil.rmtree(profile, ignore_errors=True)
