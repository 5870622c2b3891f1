"""python -m train CONFIG.yaml [--set KEY=VALUE ...] | python -m train --resume RUN_ID

CONFIG.yaml holds `base_model` (a local model directory), optionally `split` (default: the newest),
`output_root` (default: runs/ beside the database), `device`, and any hyper-parameter of
rocore.training.trainer.TrainingConfig (lora_r, learning_rate, epochs, tasks, quantization,
prompt_format: auto, chat or plain, ...).
Flags override the file. The run, its progress and its outcome are recorded in the database.
Exit status: 0 finished or cancelled, 1 refused or failed.

Data parallel: `torchrun --nproc_per_node N -m train ...` or `accelerate launch --multi_gpu --num_processes N
-m train ...` (docs/scale-out.md); the main process (rank 0) alone reads and writes the database and prints.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import yaml

from rocore.store.db import SchemaError, default_db_path, opened

JOB_KEYS = ("base_model", "split", "output_root", "device")


def _setting(item: str) -> tuple[str, object]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{item!r}: expected KEY=VALUE, e.g. --set learning_rate=1e-4")
    return key.strip(), yaml.safe_load(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train", description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, nargs="?", help="YAML file of settings")
    parser.add_argument("--db", type=Path, default=default_db_path())
    parser.add_argument("--base-model", help="local Hugging Face model directory (overrides the file)")
    parser.add_argument("--split", help="split name (default: the newest)")
    parser.add_argument("--output-root", type=Path, help="where run-N folders go (default: runs/ beside the database)")
    parser.add_argument("--device", default=None, choices=("auto", "cpu", "cuda"))
    parser.add_argument("--set", type=_setting, action="append", default=[], metavar="KEY=VALUE",
                        help="override one hyper-parameter; repeatable")
    parser.add_argument("--resume", type=int, metavar="RUN_ID", help="continue a stopped run from its last checkpoint")
    parser.add_argument("--run", type=int, metavar="RUN_ID", help="train a run already recorded as queued (used by the app)")
    # Who started the run, for the audit log: the app passes its signed-in user; default, this OS user.
    parser.add_argument("--actor", help=argparse.SUPPRESS)
    parser.add_argument("--client", default="cli", help=argparse.SUPPRESS)
    return parser


def read_settings(args: argparse.Namespace) -> dict:
    settings: dict = {}
    if args.config is not None:
        try:
            loaded = yaml.safe_load(args.config.read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise SystemExit(f"{args.config}: cannot be read ({exc.strerror})") from None
        except yaml.YAMLError as exc:
            raise SystemExit(f"{args.config}: is not valid YAML ({exc})") from None
        if not isinstance(loaded, dict):
            raise SystemExit(f"{args.config}: expected KEY: VALUE lines, found a {type(loaded).__name__}")
        settings.update(loaded)
    for key, flag in (("base_model", args.base_model), ("split", args.split), ("output_root", args.output_root),
                      ("device", args.device)):
        if flag is not None:
            settings[key] = str(flag)
    settings.update(dict(args.set))
    return settings


def show_progress() -> None:
    """Progress lines (rocore's log) and transformers' loss lines reach the log file as they happen:
    the Train page shows its last lines while the run goes on. Of several processes (a launcher's
    RANK), only the main one reports progress; the others say only what goes wrong."""
    sys.stdout.reconfigure(line_buffering=True)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    logging.getLogger("rocore").addHandler(handler)
    logging.getLogger("rocore").setLevel(logging.INFO if int(os.environ.get("RANK", "0")) == 0 else logging.WARNING)


def recorded_run(args: argparse.Namespace, settings: dict, actor: str) -> int:
    """The run to train: the one named by --resume or --run, else a new one from the settings."""
    from rocore.training.runs import TrainingConfigError, config_from_dict, create_run

    with opened(args.db, create=False) as conn:
        if args.resume is not None or args.run is not None:
            return args.resume if args.resume is not None else args.run
        if not settings.get("base_model"):
            raise TrainingConfigError("base_model: missing; give it in the file or with --base-model PATH")
        config = config_from_dict({k: v for k, v in settings.items() if k not in JOB_KEYS})
        return create_run(conn, settings["base_model"], settings.get("split"), config,
                          settings.get("output_root") or Path(args.db).resolve().parent / "runs",
                          actor=actor, client=args.client)


def main(argv: list[str] | None = None) -> int:
    from rocore.model.loading import ModelError
    from rocore.review.auth import operator_name
    from rocore.store.jobs import RunBusy
    from rocore.training.runs import RunTakenOver, TrainingConfigError, run_training
    from rocore.training.trainer import MainProcessFailed, from_main, join_processes

    args = build_parser().parse_args(argv)
    settings = read_settings(args)
    actor = args.actor or operator_name()
    device = settings.get("device", "auto")
    run_id = args.resume if args.resume is not None else args.run
    try:
        processes = join_processes(device)
    except (ModelError, ValueError) as exc:  # a device this machine does not have, FSDP or DeepSpeed
        print(f"not started: {exc}", file=sys.stderr)
        return 1
    try:
        run_id = from_main(lambda: recorded_run(args, settings, actor))
        if processes.main:
            print(f"training run {run_id}: {'resuming' if args.resume is not None else 'starting'}", flush=True)
        status = run_training(args.db, run_id, resume=args.resume is not None, device=device,
                              actor=actor, client=args.client)
    except MainProcessFailed:
        return 1  # the main process says why
    except (TrainingConfigError, RunBusy, TypeError, SchemaError) as exc:
        print(f"not started: {exc}", file=sys.stderr)
        return 1
    except RunTakenOver as exc:
        print(f"training run {run_id}: stopped: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"training run {run_id}: interrupted; resume with: python -m train --resume {run_id}", file=sys.stderr)
        return 1
    except Exception as exc:  # recorded in the run by run_training; say it once here too
        print(f"training run {run_id}: failed: {exc}", file=sys.stderr)
        return 1
    if not processes.main:
        return 0
    if status == "cancelled" and processes.count > 1:
        print(f"training run {run_id}: cancelled; resume it by launching {processes.count} processes of: "
              f"python -m train --resume {run_id}")
    elif status == "cancelled":
        print(f"training run {run_id}: cancelled; resume it with: python -m train --resume {run_id}")
    else:
        print(f"training run {run_id}: {status}")
    return 0


if __name__ == "__main__":
    show_progress()
    sys.exit(main())
