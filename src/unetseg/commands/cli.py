"""``unetseg <command>``: parse the command line, load the configuration, call one function.

Errors that are the user's to fix (configuration, data, checkpoints) print one line and exit with
status 2 (configuration) or 1 (anything else); an interrupted run exits with 130.
"""

from __future__ import annotations

import argparse
import sys
import time
import typing
from collections.abc import Callable, Sequence
from pathlib import Path

from unetseg import __version__
from unetseg.core.config import ConfigError, Device, check_scales

DEVICES = typing.get_args(Device)
CHECKPOINT_HELP = (
    "a checkpoint (.pt), a model.safetensors (with its .json), or a run folder (its best.pt, "
    "else final.pt, else model.safetensors)"
)

DEFAULT_SPLITS = ("train", "val")
Command = Callable[[str, Callable, str], argparse.ArgumentParser]  # adds a sub-command


def parse_size(text: str) -> tuple[int, int]:
    """``WIDTHxHEIGHT`` as (width, height), for argparse."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT, e.g. 512x256") from None
    if width <= 0 or height <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: both sides must be positive")
    return width, height


def _count(text: str) -> int:
    """An integer >= 0, for argparse."""
    value = int(text) if text.lstrip("-").isdigit() else -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return value


def _positive(text: str) -> int:
    """An integer >= 1, for argparse."""
    value = _count(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def parse_scales(text: str) -> tuple[float, ...]:
    """Comma-separated test-time scales (``check_scales``' rule), for argparse."""
    try:
        scales = tuple(float(v) for v in text.split(","))
        check_scales(scales)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list like 0.75,1,1.25") from None
    return scales


def _add_tta_arguments(parser: argparse.ArgumentParser, condition: str) -> None:
    parser.add_argument(
        "--tta",
        choices=["none", "flip"],
        default="none",
        help=f"{condition}test-time augmentation: flip averages with the mirrored prediction",
    )
    parser.add_argument(
        "--scales",
        type=parse_scales,
        default=(1.0,),
        help=f"{condition}average the prediction over these rescalings of the inference size, "
        "e.g. 0.75,1,1.25 (default 1)",
    )


def _add_device_argument(parser: argparse.ArgumentParser, default: str | None = "auto") -> None:
    parser.add_argument(
        "--device",
        default=default,
        choices=DEVICES,
        help="where to run (default: auto, or for train the config's train.device)",
    )


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        help="YAML recipe (see configs/); defaults apply where it is silent. "
        "Without it: the embedded synthetic data set",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="section.key=value",
        help="override a configuration value, e.g. train.base_lr=3e-4 data.size=[256,128]",
    )


def _load(args: argparse.Namespace):
    from unetseg.core.config import load_config

    return load_config(args.config, args.overrides)


# -- commands ----------------------------------------------------------------------------------
def cmd_synth(args: argparse.Namespace) -> int:
    from unetseg.data.synthetic import synthesize

    paths = synthesize(args.out, args.train, args.val, size=args.size, seed=args.seed)
    print(f"wrote {len(paths)} scenes under {args.out} (Cityscapes layout)")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from unetseg.core.classes import load_class_set
    from unetseg.data.prepare import prepare_data

    config = _load(args)
    for split, cached in prepare_data(config, load_class_set(config.data.class_set)).items():
        print(f"{split}: {len(cached)} pairs cached in {cached.folder}")
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from unetseg.commands.data import check_data

    return check_data(_load(args), args.splits or DEFAULT_SPLITS)


def cmd_data_stats(args: argparse.Namespace) -> int:
    from unetseg.commands.data import data_stats

    data_stats(_load(args), args.splits or DEFAULT_SPLITS, args.plot)
    return 0


def cmd_data_show(args: argparse.Namespace) -> int:
    from unetseg.commands.data import show_data

    show_data(_load(args), args.split, args.count, args.output, args.seed, args.augmented)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from unetseg.commands.demo import QUICK_RECIPE
    from unetseg.core.checkpoint import checkpoint_paths
    from unetseg.core.config import load_config
    from unetseg.core.runtime import elastic_restart, process_rank
    from unetseg.engine.train import train

    overrides = [*args.overrides, *([f"train.device={args.device}"] if args.device else [])]
    if args.resume:
        run_dir = args.resume
        config = load_config(args.config or run_dir / "config.yaml", overrides)
    else:
        quick = [] if args.config else QUICK_RECIPE
        config = load_config(args.config, [*quick, *overrides])
        if quick and process_rank() == 0:  # once, not once per torchrun worker
            print(
                "no --config: the demo's quick recipe (a width-16 U-Net at 256x128, 1100 steps "
                "of 8 images: minutes on a laptop CPU) on the synthetic scenes; "
                "--config configs/original_recipe.yaml trains the original project's",
                file=sys.stderr,
            )
        name = args.config.stem if args.config else "synthetic"
        run_dir = args.out or Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    # torchrun restarting the workers of a failed job: the same command, continued.
    restarted = elastic_restart() and not args.resume
    if restarted and args.out is None:
        raise ConfigError("an elastic restart (torchrun --max-restarts) needs the run's --out")
    resume = bool(args.resume) or (restarted and bool(checkpoint_paths(run_dir)))
    result = train(config, run_dir, resume=resume)
    print(f"run folder:        {result.run_dir}")
    print(f"final checkpoint:  {result.final_checkpoint}")
    print(f"best checkpoint:   {result.best_checkpoint}")
    print(
        f"metrics:           {result.run_dir / 'metrics.json'} (val mIoU {result.metrics['miou']})"
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from unetseg.commands.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(
        args.checkpoint,
        args.data_root,
        args.split,
        args.full_res,
        args.out,
        args.worst,
        args.device,
        tta=args.tta == "flip",
        scales=args.scales,
        overrides=args.overrides,
    )
    print(f"metrics: {result['out'] / 'metrics.json'}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from unetseg.commands.evaluate import calibrate_checkpoint
    from unetseg.core.checkpoint import resolve_checkpoint

    calibration = calibrate_checkpoint(
        args.checkpoint, args.data_root, args.split, args.device, overrides=args.overrides
    )
    path = resolve_checkpoint(args.checkpoint)
    print(f"calibration: {calibration.line()}")
    print(f"stored in {path}; reliability diagram in {path.parent / f'calibration_{args.split}'}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from unetseg.commands.predict import predict_paths
    from unetseg.engine.inference import Predictor

    if (args.checkpoint is None) == (args.onnx is None):
        raise ConfigError("predict: give exactly one of --checkpoint or --onnx")
    predictor = Predictor.load(args.checkpoint or args.onnx, args.device)
    report = predict_paths(
        args.input,
        args.output,
        predictor,
        batch_size=args.batch_size,
        tta=args.tta == "flip",
        sliding_window=args.sliding_window,
        scales=args.scales,
        ids_only=args.ids_only,
        confidence=args.confidence,
        domain_check=args.domain_check,
        frames=args.frames,
    )
    print(f"wrote {len(report.written)} prediction set(s) to {args.output}")
    if report.checked:
        print(
            f"domain check: {len(report.warned)} of {len(report.written)} input(s) lie far "
            f"outside the training data{', each named above' if report.warned else ''} "
            f"(scores in {args.output / 'predictions.json'})"
        )
    elif args.domain_check:
        print("domain check: off (the model has no profile of its training data)")
    if report.failed:  # each was named on a "skipped:" line as it happened
        print(f"failed: {len(report.failed)} input(s), each named above", file=sys.stderr)
    return 1 if report.failed else 0


def cmd_report(args: argparse.Namespace) -> int:
    from unetseg.engine.report import write_report

    if not (args.run_dir / "config.yaml").is_file():
        raise ConfigError(f"{args.run_dir}: not a run folder (no config.yaml)")
    extra = {"predictions": args.predictions} if args.predictions else None
    print(f"report: {write_report(args.run_dir, extra)}")
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    from unetseg.core.config import config_yaml

    print(config_yaml(_load(args)), end="")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from unetseg.engine.export import export_onnx

    path = export_onnx(args.checkpoint, args.output, opset=args.opset)
    print(f"ONNX model: {path} (metadata: {path.with_suffix('.json')})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from unetseg.commands.demo import run_demo

    run_demo(args.out, args.overrides)
    return 0


# -- parser ------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The ``unetseg`` argument parser with one sub-command per job."""
    parser = argparse.ArgumentParser(
        prog="unetseg",
        description="U-Net semantic segmentation for street scenes: synthesize or read data, "
        "train, evaluate, predict and export.",
    )
    parser.add_argument("--version", action="version", version=f"unetseg {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Callable, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    adders = (_add_demo, _add_synth, _add_prepare, _add_data, _add_train, _add_evaluate)
    for add in (*adders, _add_calibrate, _add_predict, _add_export, _add_report, _add_config):
        add(command)
    return parser


def _add_demo(command: Command) -> None:
    """``unetseg demo``: the main job on the embedded data."""
    demo = command(
        "demo",
        cmd_demo,
        "the main job: synthesize street scenes, train a small U-Net, "
        "evaluate it and predict on a few images",
    )
    demo.add_argument(
        "--out",
        type=Path,
        default=Path("demo_output"),
        help="folder for the data, the run and the predictions (default: demo_output)",
    )
    demo.add_argument(
        "overrides",
        nargs="*",
        metavar="section.key=value",
        help="override the demo recipe, e.g. train.training_iterations=50",
    )


def _add_synth(command: Command) -> None:
    """``unetseg synth``: synthetic street scenes."""
    synth = command("synth", cmd_synth, "write synthetic street scenes in the Cityscapes layout")
    synth.add_argument("--out", type=Path, required=True, help="root folder to write into")
    synth.add_argument("--train", type=_count, default=300, help="number of train scenes (300)")
    synth.add_argument("--val", type=_count, default=40, help="number of val scenes (40)")
    synth.add_argument("--size", type=parse_size, default=(512, 256), help="WIDTHxHEIGHT (512x256)")
    synth.add_argument(
        "--seed", type=_count, default=0, help="random seed; same seed, same bytes (0)"
    )


def _add_prepare(command: Command) -> None:
    """``unetseg prepare``: the training cache."""
    prepare = command("prepare", cmd_prepare, "check the data and build the training cache once")
    _add_config_arguments(prepare)


def _tools(command: Command, name: str, help_text: str) -> Callable[..., argparse.ArgumentParser]:
    """A command made of tools (``unetseg data check``); returns what adds one tool to it."""
    tools = command(name, lambda a: 0, help_text).add_subparsers(
        dest=f"{name}_command", required=True, metavar="TOOL"
    )

    def tool(
        tool_name: str, handler: Callable, help_text: str, description: str
    ) -> argparse.ArgumentParser:
        parser = tools.add_parser(tool_name, help=help_text, description=description)
        parser.set_defaults(handler=handler)
        return parser

    return tool


def _add_data(command: Command) -> None:
    """``unetseg data``: data check, stats and show."""
    tool = _tools(command, "data", "data set tools: check, stats, show")
    check = tool(
        "check",
        cmd_data_check,
        "list every problem of the data set; exits non-zero if there is any",
        "list every problem (missing mask, unreadable file, size mismatch, unknown mask value); "
        "exit 1 if any",
    )
    stats = tool(
        "stats",
        cmd_data_stats,
        "pixel share per class and split, with suggested class weights and a bar chart",
        "pixel share per class and split, suggested median-frequency class weights, and a bar "
        "chart PNG",
    )
    stats.add_argument(
        "--out",
        "--plot",
        dest="plot",
        type=Path,
        default=Path("class_stats.png"),
        help="where to write the bar chart (class_stats.png)",
    )
    show = tool(
        "show",
        cmd_data_show,
        "a PNG grid of image | colour mask samples",
        "a PNG grid of image | colour mask for random samples, with the class legend",
    )
    show.add_argument("--split", default="train", help="split to sample from (train)")
    show.add_argument("--count", type=_positive, default=6, help="number of samples (6)")
    show.add_argument("--seed", type=int, default=0, help="sampling seed (0)")
    show.add_argument(
        "--augmented",
        action="store_true",
        help="add the training augmentation of each sample, at data.size, beside it",
    )
    show.add_argument(
        "--out",
        "--output",
        dest="output",
        type=Path,
        default=Path("samples.png"),
        help="PNG to write (samples.png)",
    )
    for sub in (check, stats):
        sub.add_argument(
            "--split",
            dest="splits",
            action="append",
            help="a split to look at; repeat for several (default: train and val)",
        )
    for sub in (check, stats, show):
        _add_config_arguments(sub)


def _add_train(command: Command) -> None:
    """``unetseg train``: training."""
    train = command("train", cmd_train, "train a U-Net; everything of the run goes into one folder")
    _add_config_arguments(train)
    train.add_argument(
        "--out", type=Path, help="run folder (default: runs/<config name>-<date>-<time>)"
    )
    _add_device_argument(train, default=None)
    train.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue a stopped run exactly from its newest good checkpoint",
    )


def _add_evaluate(command: Command) -> None:
    """``unetseg evaluate``: scoring a checkpoint."""
    evaluate = command(
        "evaluate",
        cmd_evaluate,
        "score a checkpoint: metrics.json, per-class "
        "table, IoU chart, confusion matrix and the worst images",
    )
    onnx = "; or an .onnx from `unetseg export` (with --full-res)"
    _add_split_arguments(evaluate, "score", CHECKPOINT_HELP + onnx)
    evaluate.add_argument(
        "--full-res",
        action="store_true",
        help="score at the ground truth's own resolution, as the official benchmark does: each "
        "image goes through the predict path (resized to the training area, aspect kept; logits "
        "upsampled)",
    )
    _add_tta_arguments(evaluate, "with --full-res: ")
    evaluate.add_argument("--out", type=Path, help="output folder (default: beside the checkpoint)")
    evaluate.add_argument(
        "--worst", type=_count, default=4, help="how many worst images to draw (4)"
    )
    _add_device_argument(evaluate)


def _add_report(command: Command) -> None:
    """``unetseg report``: a run's report page, rebuilt."""
    report = command("report", cmd_report, "rebuild a run folder's report.html from its files")
    report.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the run folder")
    report.add_argument(
        "--predictions", type=Path, help="a predict output folder to show overlays from"
    )


def _add_config(command: Command) -> None:
    """``unetseg config show``: the resolved configuration."""
    show = _tools(command, "config", "configuration tools: show")(
        "show",
        cmd_config_show,
        "print the configuration a command would use (every section.key, resolved)",
        "print the configuration a command would use, every section.key resolved from the "
        "defaults, the YAML and the overrides",
    )
    _add_config_arguments(show)


def _add_split_arguments(
    parser: argparse.ArgumentParser, verb: str, checkpoint_help: str = CHECKPOINT_HELP
) -> None:
    """--checkpoint, and the data it is scored or fitted on."""
    parser.add_argument("--checkpoint", type=Path, required=True, help=checkpoint_help)
    parser.add_argument(
        "--data-root",
        type=Path,
        help="another copy of the data set in the same layout (default: the run's)",
    )
    parser.add_argument("--split", default="val", help=f"split to {verb} (val)")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="section.key=value",
        help="change the run's configuration for this, e.g. data.val_filter=['0001TP*']",
    )


def _add_calibrate(command: Command) -> None:
    """``unetseg calibrate``: a checkpoint's temperature."""
    calibrate = command(
        "calibrate",
        cmd_calibrate,
        "fit a checkpoint's temperature on a split so that its confidence matches its accuracy "
        "(masks do not change); stored in the checkpoint, reliability diagram beside it",
    )
    _add_split_arguments(calibrate, "fit on")
    _add_device_argument(calibrate)


def _add_predict(command: Command) -> None:
    """``unetseg predict``: segmenting image files."""
    predict = command(
        "predict",
        cmd_predict,
        "segment images of any size and video clips; writes colour masks, "
        "overlays and label-id PNGs at the original resolution (clips: colour and overlay videos)",
    )
    predict.add_argument(
        "--checkpoint", type=Path, help=f"{CHECKPOINT_HELP}; or an .onnx from `unetseg export`"
    )
    predict.add_argument(
        "--onnx", type=Path, help="an .onnx from `unetseg export` (as --checkpoint)"
    )
    predict.add_argument(
        "--input",
        type=Path,
        nargs="+",
        required=True,
        help="image files, video clips and/or folders (searched recursively for both); clips "
        "(.mp4, .mov, .mkv, .avi, .webm; needs unetseg[video])",
    )
    predict.add_argument(
        "--out", "--output", dest="output", type=Path, required=True, help="folder for the outputs"
    )
    predict.add_argument(
        "--batch-size", type=_positive, default=4, help="images per forward pass (4)"
    )
    _add_tta_arguments(predict, "")
    predict.add_argument(
        "--ids-only",
        action="store_true",
        help="write the id masks alone (a folder the official Cityscapes evaluation takes)",
    )
    predict.add_argument(
        "--confidence",
        action="store_true",
        help="also X_confidence.png: each pixel's calibrated confidence as 0-255 grey "
        "(clips: X_confidence.mp4)",
    )
    predict.add_argument(
        "--frames",
        action="store_true",
        help="clips: also each frame's id mask, as X_frames/NNNNNN_classIds.png",
    )
    predict.add_argument(
        "--sliding-window",
        action="store_true",
        help="tile large images at their own resolution instead of shrinking them",
    )
    predict.add_argument(
        "--no-domain-check",
        dest="domain_check",
        action="store_false",
        help="do not warn about inputs unlike the training data",
    )
    _add_device_argument(predict)


def _add_export(command: Command) -> None:
    """``unetseg export``: ONNX export."""
    export = command("export", cmd_export, "export a checkpoint to ONNX (dynamic batch and size)")
    export.add_argument("--checkpoint", type=Path, required=True, help=CHECKPOINT_HELP)
    export.add_argument(
        "--out", "--output", dest="output", type=Path, required=True, help="ONNX file to write"
    )
    export.add_argument("--opset", type=int, default=18, help="ONNX opset version (18)")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``unetseg`` console command."""
    from unetseg.core.checkpoint import CheckpointError
    from unetseg.core.efficientnet_lite import WeightsError
    from unetseg.core.extras import MissingExtra
    from unetseg.core.runtime import sigterm_as_interrupt
    from unetseg.data.io import DataError
    from unetseg.engine.train import TrainingError, TrainingInterrupted

    args = build_parser().parse_args(argv)
    try:
        with sigterm_as_interrupt():  # SIGTERM stops as cleanly as Ctrl-C, in every command
            return args.handler(args)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (
        DataError,
        CheckpointError,
        WeightsError,
        MissingExtra,
        TrainingError,
        TrainingInterrupted,
    ) as error:
        print(f"error: {error}", file=sys.stderr)
        return 130 if isinstance(error, TrainingInterrupted) else 1
    except OSError as error:  # the file system's answer: a read-only or full disk, a file
        # where a folder should be, a symlink loop, ... named by the path it concerns
        where = f"{error.filename}: " if error.filename else ""
        print(f"error: {where}{error.strerror or error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def entry() -> int:
    """The ``unetseg`` console command: ``main`` under the faster allocator where available."""
    from unetseg.core.allocator import use_fast_allocator

    use_fast_allocator()  # re-executes this command once, before any work
    return main()
