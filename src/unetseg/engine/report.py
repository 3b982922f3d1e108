"""One self-contained HTML page per run: ``report.html``, to open from disk or mail around.

Everything the page shows is embedded: images as base64 ``data:`` URIs and a little inline CSS,
with no scripts, fonts or network requests, so any browser renders it offline. Each section
is drawn from the files a run (``unetseg train``), an evaluation (``unetseg evaluate``) and,
optionally, a predictions folder leave behind; a section whose inputs do not exist yet says so.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from unetseg.core.config import Config, changed_settings
from unetseg.core.files import write_text

MAX_SNAPSHOTS = 6
MAX_OVERLAYS = 6
EXTRA_SECTIONS = ("predictions",)

_MIME_BY_MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"))

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
       margin: 0 auto; max-width: 1100px; padding: 0 16px 48px; color: #222; line-height: 1.4; }
h1 { font-size: 1.5em; margin: 20px 0 4px; word-break: break-all; }
h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; padding-bottom: 4px; margin-top: 32px; }
h3 { font-size: 1em; margin: 16px 0 6px; }
nav { font-size: 0.9em; margin-bottom: 8px; }
nav a { margin-right: 12px; color: #0550ae; text-decoration: none; }
.muted { color: #777; }
.missing { color: #8a6d3b; background: #fcf8e3; border: 1px solid #faebcc;
           padding: 6px 10px; border-radius: 4px; }
pre { background: #f6f8fa; border: 1px solid #ddd; padding: 10px; overflow-x: auto;
      font-size: 0.85em; max-height: 360px; }
table { border-collapse: collapse; font-size: 0.9em; margin: 6px 0; }
th, td { border: 1px solid #ddd; padding: 3px 10px; }
th { background: #f0f0f0; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.absent td { color: #999; }
.gallery { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(420px, 1fr)); gap: 12px; }
.thumbs { display: grid; grid-template-columns: repeat(auto-fill, minmax(320px, 1fr)); gap: 12px; }
.thumbs img { width: 100%; }
.side { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
figure { margin: 0; max-width: 100%; }
figure img { max-width: 100%; height: auto; border: 1px solid #ddd; display: block; }
.wide img { max-width: min(100%, 720px); }
figcaption { font-size: 0.8em; color: #555; margin-top: 2px; word-break: break-all; }
"""

_SECTIONS = (
    ("summary", "Summary"),
    ("config", "Configuration"),
    ("curves", "Curves"),
    ("per-class", "Per-class scores"),
    ("confusion", "Confusion matrix"),
    ("calibration", "Calibration"),
    ("snapshots", "Snapshots"),
    ("predictions", "Predictions"),
)


def write_report(run_dir: Path, extra_sections: dict[str, Path] | None = None) -> Path:
    """Write ``run_dir/report.html`` (atomically) and return its path.

    ``extra_sections`` maps a section to an extra input folder; only ``"predictions"`` is known:
    a folder searched recursively for ``NAME_overlay.jpg`` files (as ``unetseg predict`` and the
    demo write them); the first few by path are shown.
    """
    run_dir = Path(run_dir)
    extra = {key: Path(value) for key, value in (extra_sections or {}).items()}
    unknown = sorted(set(extra) - set(EXTRA_SECTIONS))
    if unknown:
        raise ValueError(f"unknown extra section(s) {unknown}; known: {list(EXTRA_SECTIONS)}")
    path = run_dir / "report.html"
    write_text(path, render_report(run_dir, extra))
    return path


def render_report(run_dir: Path, extra: dict[str, Path] | None = None) -> str:
    """The report page as a string (see ``write_report``)."""
    extra = extra or {}
    evaluation = find_evaluation(run_dir)
    bodies = {
        "summary": _summary(run_dir, evaluation),
        "config": _config(run_dir),
        "curves": _curves(run_dir),
        "per-class": _per_class(run_dir, evaluation),
        "confusion": _confusion(evaluation),
        "calibration": _calibration(evaluation),
        "snapshots": _snapshots(run_dir),
        "predictions": _predictions(evaluation, extra.get("predictions")),
    }
    sections = "\n".join(
        f'<section id="{key}">\n<h2>{title}</h2>\n{bodies[key]}\n</section>'
        for key, title in _SECTIONS
    )
    nav = " ".join(f'<a href="#{key}">{title}</a>' for key, title in _SECTIONS)
    title = _esc(f"unetseg report: {run_dir.resolve().name}")
    stamp = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{title}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<h1>{title}</h1>\n"
        f'<p class="muted">generated {_esc(stamp)}</p>\n<nav>{nav}</nav>\n'
        f"{sections}\n</body>\n</html>\n"
    )


# -- finding and reading inputs ------------------------------------------------------------------
def find_evaluation(run_dir: Path) -> Path | None:
    """The newest ``run_dir/evaluation*`` folder holding a metrics.json, or None."""
    found = [p.parent for p in run_dir.glob("evaluation*/metrics.json") if p.is_file()]
    return max(found, key=lambda p: (_mtime(p / "metrics.json"), p.name), default=None)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # removed since the glob
        return 0.0


def read_json(path: Path) -> Any:
    """Parsed JSON, or None when the file is missing or unreadable (e.g. being written)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON object rows of a ``.jsonl`` file; a broken line (a crash mid-write) is skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    rows = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def image_data_uri(path: Path) -> str | None:
    """A ``data:`` URI of a PNG or JPEG file, or None if it is missing or neither format."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    mime = next((m for magic, m in _MIME_BY_MAGIC if data.startswith(magic)), None)
    if mime is None:
        return None
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _step_of(path: Path) -> int:
    match = re.search(r"(\d+)", path.stem)
    return int(match.group(1)) if match else -1


def pick_snapshots(paths: Iterable[Path], limit: int = MAX_SNAPSHOTS) -> list[Path]:
    """At most ``limit`` snapshots by step: the first one and the newest ones, newest last."""
    ordered = sorted(paths, key=lambda p: (_step_of(p), p.name))
    if len(ordered) <= limit:
        return ordered
    return [ordered[0], *ordered[len(ordered) - (limit - 1) :]]


# -- formatting ----------------------------------------------------------------------------------
def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt_score(value: Any) -> str:
    """A score with 4 decimals; None, NaN or a non-number is "n/a"."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "n/a"
    return "n/a" if math.isnan(value) or math.isinf(value) else f"{value:.4f}"


def _fmt_count(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "n/a"
    return f"{int(value):,}"


def _missing(what: str) -> str:
    return f'<p class="missing">{_esc(what)}: not available yet.</p>'


def _figure(path: Path, caption: str | None = None) -> str:
    """An embedded image with its file name as caption (a note if it cannot be read)."""
    uri = image_data_uri(path)
    label = _esc(caption or path.name)
    if uri is None:
        return f'<p class="missing">{label}: unreadable image.</p>'
    return f'<figure><img src="{uri}" alt="{label}"><figcaption>{label}</figcaption></figure>'


def _gallery(paths: Iterable[Path], css: str = "gallery") -> str:
    return f'<div class="{css}">' + "".join(_figure(p) for p in paths) + "</div>"


def _table(header: list[str], rows: list[tuple[list[str], str]]) -> str:
    """An HTML table; ``rows`` are (already escaped cells, row CSS class)."""
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join(
        f'<tr class="{css}">' + "".join(cells) + "</tr>"
        if css
        else "<tr>" + "".join(cells) + "</tr>"
        for cells, css in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _pairs(pairs: list[tuple[str, str]]) -> str:
    return _table(
        ["", ""], [([f"<th>{_esc(k)}</th>", f"<td>{_esc(v)}</td>"], "") for k, v in pairs]
    )


# -- sections ------------------------------------------------------------------------------------
def _steps_done(run_dir: Path, metrics: Any) -> str:
    if isinstance(metrics, dict) and isinstance(metrics.get("step"), int):
        return str(metrics["step"])
    steps = [
        r.get("step") for name in ("log.jsonl", "eval.jsonl") for r in read_jsonl(run_dir / name)
    ]
    steps = [s for s in steps if isinstance(s, int)]
    return str(max(steps)) if steps else "n/a"


def _best_eval(run_dir: Path) -> tuple[float, str] | None:
    """The best periodic val mIoU and when it came: its step and, when logged, training time."""
    scored = [
        r
        for r in read_jsonl(run_dir / "eval.jsonl")
        if isinstance(r.get("miou"), (int, float)) and math.isfinite(r["miou"])
    ]
    if not scored:
        return None
    best = max(scored, key=lambda r: r["miou"])
    when = f"step {best.get('step')}"
    if isinstance(best.get("elapsed_s"), (int, float)):
        when += f", after {best['elapsed_s'] / 60:.1f} min of training"
    return best["miou"], when


def _summary(run_dir: Path, evaluation: Path | None) -> str:
    metrics = read_json(run_dir / "metrics.json")
    pairs = [("run folder", str(run_dir.resolve())), ("steps done", _steps_done(run_dir, metrics))]
    if isinstance(metrics, dict):
        pairs += [
            ("final val mIoU", fmt_score(metrics.get("miou"))),
            ("final val mean Dice", fmt_score(metrics.get("mean_dice"))),
            ("final val fwIoU", fmt_score(metrics.get("fwiou"))),
            ("final val pixel accuracy", fmt_score(metrics.get("pixel_accuracy"))),
        ]
    best = _best_eval(run_dir)
    if best is not None:
        pairs.append(("best val mIoU (eval.jsonl)", f"{best[0]:.4f} at {best[1]}"))
    pairs += _how_it_ran(run_dir)
    scored = read_json(evaluation / "metrics.json") if evaluation else None
    if isinstance(scored, dict):
        split = scored.get("split", "?")
        pairs.append(
            (f"evaluation mIoU ({evaluation.name}, {split})", fmt_score(scored.get("miou")))
        )
    notes = ""
    if not isinstance(metrics, dict):
        notes += _missing("final metrics (metrics.json)")
    if best is None:
        notes += _missing("periodic evaluations (eval.jsonl)")
    return _pairs(pairs) + notes


def _how_it_ran(run_dir: Path) -> list[tuple[str, str]]:
    """Model, device, resolved precision (run.json), throughput and training time (log.jsonl)."""
    facts, rows = read_json(run_dir / "run.json"), read_jsonl(run_dir / "log.jsonl")
    pairs = []
    if isinstance(facts, dict):
        weights = "ImageNet encoder" if facts.get("pretrained") else "random weights"
        pairs += [
            (
                "model",
                f"{facts.get('encoder')} ({weights}), {_fmt_count(facts.get('parameters'))} parameters",
            ),
            (
                "device",
                f"{facts.get('device')}, {facts.get('precision')}, {facts.get('processes')} process(es)",
            ),
        ]
    speeds = [r["images_per_s"] for r in rows if isinstance(r.get("images_per_s"), (int, float))]
    if speeds:
        pairs.append(
            (
                "training images/s (median of logged steps)",
                f"{sorted(speeds)[len(speeds) // 2]:.2f}",
            )
        )
    elapsed = [r["elapsed_s"] for r in rows if isinstance(r.get("elapsed_s"), (int, float))]
    if elapsed:
        pairs.append(("training time", f"{max(elapsed) / 60:.1f} min"))
    return pairs


def _config(run_dir: Path) -> str:
    """The settings that differ from the defaults, then the whole resolved file, folded."""
    try:
        text = (run_dir / "config.yaml").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return _missing("config.yaml")
    changed = _changed_settings(text)
    listed = "".join(f"<li><code>{_esc(item)}</code></li>" for item in changed)
    return (
        f"<p>Settings other than the defaults:</p><ul>{listed or '<li>none</li>'}</ul>"
        f"<details><summary>config.yaml</summary><pre>{_esc(text)}</pre></details>"
    )


def _changed_settings(text: str) -> list[str]:
    """``section.key=value`` for each value of the YAML that is not the default."""
    try:
        given = yaml.safe_load(text)
        defaults = Config().to_dict()
    except yaml.YAMLError:
        return []
    return changed_settings(given, defaults) if isinstance(given, dict) else []


def _curves(run_dir: Path) -> str:
    names = ("curves_loss.png", "curves_miou.png", "curves_lr.png", "curves_class_iou.png")
    found = [run_dir / n for n in names if (run_dir / n).is_file()]
    missing = "".join(_missing(n) for n in names if not (run_dir / n).is_file())
    return (_gallery(found, "charts") if found else "") + missing


def _per_class(run_dir: Path, evaluation: Path | None) -> str:
    source = evaluation / "metrics.json" if evaluation else run_dir / "metrics.json"
    metrics = read_json(source)
    per_class = metrics.get("per_class") if isinstance(metrics, dict) else None
    if not isinstance(per_class, dict):
        return _missing("per-class scores (metrics.json)")
    absent = [str(a) for a in metrics.get("absent_classes") or []]
    rows = []
    for name, s in per_class.items():
        s = s if isinstance(s, dict) else {}
        cells = [f"<td>{_esc(name)}</td>"] + [
            f'<td class="num">{v}</td>'
            for v in (
                fmt_score(s.get("iou")),
                fmt_score(s.get("dice")),
                fmt_score(s.get("accuracy")),
                _fmt_count(s.get("gt_pixels")),
            )
        ]
        rows.append((cells, "absent" if name in absent else ""))
    table = _table(["class", "IoU", "Dice", "accuracy", "GT pixels"], rows)
    origin = source.relative_to(run_dir) if source.is_relative_to(run_dir) else source
    skipped = ", ".join(_esc(a) for a in absent) if absent else "none"
    chart = evaluation / "per_class_iou.png" if evaluation else None
    figure = _figure(chart) if chart is not None and chart.is_file() else ""
    return (
        f'<p class="muted">from {_esc(origin)}</p>\n'
        f"<p>Skipped as absent (no ground truth and never predicted): {skipped}</p>\n"
        f'<div class="side">{table}{figure}</div>'
    )


def _confusion(evaluation: Path | None) -> str:
    if evaluation is None or not (evaluation / "confusion_matrix.png").is_file():
        return _missing("confusion matrix (run unetseg evaluate)")
    return f'<p class="muted">from {_esc(evaluation.name)}/</p>' + _gallery(
        [evaluation / "confusion_matrix.png"], "gallery wide"
    )


def _calibration(evaluation: Path | None) -> str:
    found = read_json(evaluation / "metrics.json") if evaluation else None
    calibration = found.get("calibration") if isinstance(found, dict) else None
    diagram = evaluation / "reliability.png" if evaluation else None
    if not isinstance(calibration, dict) or diagram is None or not diagram.is_file():
        return _missing("reliability diagram (run unetseg calibrate, then unetseg evaluate)")
    without = calibration.get("ece_before")
    note = (
        f"temperature {fmt_score(calibration.get('temperature'))}; expected calibration error "
        + (f"{fmt_score(without)} without it, " if without is not None else "")
        + f"{fmt_score(calibration.get('ece_after'))} with it ({evaluation.name}/)"
    )
    return f'<p class="muted">{_esc(note)}</p>' + _gallery([diagram])


def _snapshots(run_dir: Path) -> str:
    found = list((run_dir / "snapshots").glob("*.png"))
    if not found:
        return _missing("snapshots")
    chosen = pick_snapshots(found)
    note = f"{len(chosen)} of {len(found)} (the first and the newest; newest last)"
    return f'<p class="muted">{_esc(note)}: image | ground truth | prediction</p>' + _gallery(
        chosen
    )


def _predictions(evaluation: Path | None, folder: Path | None) -> str:
    parts = []
    worst = sorted(evaluation.glob("worst_*.png")) if evaluation else []
    if worst:
        parts += ["<h3>Worst validation images (by image mIoU)</h3>", _gallery(worst)]
    else:
        parts.append(_missing("worst validation images (run unetseg evaluate)"))
    if folder is not None:
        overlays = sorted(folder.rglob("*_overlay.jpg"))[:MAX_OVERLAYS]
        if overlays:
            parts += [f"<h3>Predictions ({_esc(folder.name)}/)</h3>", _gallery(overlays, "thumbs")]
        else:
            parts.append(_missing(f"prediction overlays in {folder}"))
    return "\n".join(parts)
