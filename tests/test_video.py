"""Prediction on video clips: colour, overlay and confidence videos, per-frame id masks equal to
the image path's, each frame's domain check, frames streamed in batches, Ctrl-C keeping what was
done, and broken clips named in one line. The input clip is made here with PyAV, losslessly."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_train import tiny_overrides

av = pytest.importorskip("av")

from unetseg.commands import video  # noqa: E402
from unetseg.commands.cli import main  # noqa: E402
from unetseg.commands.outputs import written_ids  # noqa: E402
from unetseg.commands.predict import predict_paths  # noqa: E402
from unetseg.core.config import load_config  # noqa: E402
from unetseg.data.io import DataError  # noqa: E402
from unetseg.data.video import open_clip  # noqa: E402
from unetseg.engine import viz  # noqa: E402
from unetseg.engine.inference import Predictor, segment  # noqa: E402
from unetseg.engine.train import TrainResult, train  # noqa: E402

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
FRAMES, DARK_FROM = 10, 6  # frames 6 to 9 are the scenes at a fifth of their brightness
WIDTH, HEIGHT = 127, 63  # odd sides: the output videos pad them, the id masks do not


def decode(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


@pytest.fixture(scope="module")
def trained(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    folder = tmp_path_factory.mktemp("video-model")
    overrides = tiny_overrides(synthetic_root, folder / "cache")
    return train(load_config(None, overrides), folder / "run", progress=False)


@pytest.fixture(scope="module")
def predictor(trained: TrainResult) -> Predictor:
    return Predictor.from_checkpoint(trained.run_dir, "cpu")


@pytest.fixture(scope="module")
def clip(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lossless 10-frame clip of the training scenes at 10 frames/s, the last four darkened."""
    scenes = sorted((synthetic_root / "leftImg8bit" / "train").rglob("*.png"))
    path = tmp_path_factory.mktemp("clip") / "street.mkv"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("ffv1", rate=Fraction(10))
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "bgr0"
        for index in range(FRAMES):
            rgb = np.asarray(Image.open(scenes[index % len(scenes)]).convert("RGB"))
            rgb = rgb[:HEIGHT, :WIDTH] // (5 if index >= DARK_FROM else 1)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def test_a_clip_gives_videos_and_per_frame_masks_equal_to_the_image_path(
    trained: TrainResult,
    predictor: Predictor,
    clip: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    out = tmp_path / "out"
    args = ["predict", "--checkpoint", str(trained.run_dir), "--input", str(clip)]
    assert main([*args, "--out", str(out), "--frames", "--confidence", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    inputs = decode(clip)
    assert len(inputs) == FRAMES
    masks = [segment(predictor, frame, confidence=True) for frame in inputs]
    ids = written_ids(predictor.class_set)
    for index, found in enumerate(masks):
        written = np.asarray(Image.open(out / "street_frames" / f"{index:06d}_labelIds.png"))
        # Frames go through the model in batches of 4, here one at a time.
        assert (written == ids[found.mask]).mean() > 0.99
    for name in ("color", "overlay", "confidence"):
        frames = decode(out / f"street_{name}.mp4")
        assert len(frames) == FRAMES and frames[0].shape == (HEIGHT + 1, WIDTH + 1, 3)
    color = decode(out / "street_color.mp4")
    # H.264 blurs the colours a little at class edges; the frame order and classes stay.
    for frame, found in zip(color, masks):
        expected = viz.colorize(found.mask, predictor.class_set).astype(int)
        assert np.abs(frame[:HEIGHT, :WIDTH].astype(int) - expected).mean() < 8
    grey = decode(out / "street_confidence.mp4")[0][:HEIGHT, :WIDTH, 0].astype(int)
    assert np.abs(grey - np.round(masks[0].confidence * 255)).mean() < 4

    entry = json.loads((out / "predictions.json").read_text())["inputs"][0]
    assert entry["frames"] == FRAMES and entry["fps"] == 10 and not entry["stopped"]
    checks = entry["frame_checks"]
    assert [c["frame"] for c in checks] == list(range(FRAMES))
    assert [c["time"] for c in checks] == pytest.approx([i / 10 for i in range(FRAMES)])
    assert all(0 < c["mean_confidence"] <= 1 for c in checks)
    dark = [any("darker than any training image" in w for w in c["warnings"]) for c in checks]
    assert dark == [False] * DARK_FROM + [True] * (FRAMES - DARK_FROM)
    assert entry["warned_frames"] >= FRAMES - DARK_FROM
    warning = next(line for line in captured.err.splitlines() if line.startswith("warning:"))
    assert f"{clip}: " in warning and "frames lie far outside the training data" in warning
    assert "domain check: 1 of 1 input(s) lie far outside" in captured.out


def test_frames_stream_through_in_batches(
    predictor: Predictor, clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded, batches = [], []
    real_open, real_predict = video.open_clip, video.predict_batch

    @contextlib.contextmanager
    def counting_open(path: Path):
        with real_open(path) as (description, frames):
            yield description, (decoded.append(frame) or frame for frame in frames)

    def recording_predict(model, images, *args):
        batches.append((len(images), len(decoded)))
        return real_predict(model, images, *args)

    monkeypatch.setattr(video, "open_clip", counting_open)
    monkeypatch.setattr(video, "predict_batch", recording_predict)
    predict_paths([clip.parent], tmp_path, predictor, batch_size=4, progress=False)  # a folder
    assert (tmp_path / "street_color.mp4").is_file()
    # Never more decoded than one batch ahead of the model: memory does not grow with the clip.
    assert batches == [(4, 4), (4, 8), (2, 10)]


def test_ctrl_c_keeps_the_frames_done_and_lists_them(
    predictor: Predictor, clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_predict, calls = video.predict_batch, []

    def stop_on_the_second_batch(model, images, *args):
        calls.append(len(images))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_predict(model, images, *args)

    monkeypatch.setattr(video, "predict_batch", stop_on_the_second_batch)
    with pytest.raises(KeyboardInterrupt):
        predict_paths([clip], tmp_path, predictor, batch_size=4, progress=False, frames=True)
    assert len(decode(tmp_path / "street_color.mp4")) == 4
    assert len(list((tmp_path / "street_frames").iterdir())) == 4
    entry = json.loads((tmp_path / "predictions.json").read_text())["inputs"][0]
    assert entry["stopped"] and entry["frames"] == 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files


def test_a_broken_clip_is_one_line_naming_it_and_the_other_inputs_go_on(
    predictor: Predictor, synthetic_root: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    image = sorted((synthetic_root / "leftImg8bit" / "val").rglob("*.png"))[0]
    report = predict_paths([broken, image], tmp_path / "out", predictor, progress=False)
    assert len(report.written) == 1 and report.failed[0][0] == broken
    assert report.failed[0][1].startswith(f"{broken}: not a video FFmpeg can read")
    assert not list((tmp_path / "out").glob("broken*")) and not list((tmp_path / "out").glob(".*"))


def test_without_pyav_a_clip_names_the_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "av", None)
    needs = r"clip.mp4: .*pip install 'unetseg\[video\]'"
    with pytest.raises(DataError, match=needs), open_clip(tmp_path / "clip.mp4"):
        pass


def test_frames_become_a_clip_predict_reads(tmp_path: Path) -> None:
    """``scripts/frames_to_clip.py``: image files in name order, one H.264 clip."""
    spec = importlib.util.spec_from_file_location("frames_to_clip", SCRIPTS / "frames_to_clip.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    shades = [40, 120, 200]
    for index, shade in enumerate(shades):
        Image.new("RGB", (64, 32), (shade, shade, shade)).save(tmp_path / f"f{index}.png")
    out = script.main([str(tmp_path / "f*.png"), str(tmp_path / "clip.mp4"), "--fps", "5"])
    frames = decode(out)
    assert [round(float(f.mean())) for f in frames] == pytest.approx(shades, abs=3)
    Image.new("RGB", (32, 32)).save(tmp_path / "f9.png")
    with pytest.raises(SystemExit):
        script.main([str(tmp_path / "f*.png"), str(tmp_path / "other.mp4")])
    assert not (tmp_path / "other.mp4").exists()
