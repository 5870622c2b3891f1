"""`python -m rocore ...`: everything the pages do, headless, for a GPU server or a script.

Exit status: 0 done, 1 refused (bad input, with located errors on stderr), 2 wrong usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rocore.db import SchemaError, default_db_path, opened


def _db_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", type=Path, default=default_db_path(),
                        help="SQLite database (default: $ROCORE_DB or demo/reviews.db)")


def _map_item(item: str) -> tuple[str, str]:
    field, sep, column = item.partition("=")
    if not sep or not field.strip() or not column.strip():
        raise argparse.ArgumentTypeError(f"{item!r}: expected FIELD=COLUMN, e.g. --map icd10='ICD-10 code'")
    return field.strip(), column.strip()


def cmd_import(args: argparse.Namespace) -> int:
    from rocore.case_import import ImportRefused, format_problems, import_cases, rejected_rows_csv

    path: Path = args.file
    try:
        data = path.read_bytes()
    except OSError as exc:
        print(f"{path}: cannot be read ({exc.strerror})", file=sys.stderr)
        return 1
    try:
        with opened(args.db) as conn:
            result = import_cases(conn, data, str(path), dict(args.map), update=args.update,
                                  skip_invalid=args.skip_invalid)
    except ImportRefused as exc:
        print(format_problems(exc.problems), file=sys.stderr)
        print(f"{path}: nothing imported ({len(exc.errors)} errors); the database is unchanged",
              file=sys.stderr)
        return 1
    if result.warnings:
        print(format_problems(result.warnings), file=sys.stderr)
    print(f"{path}: imported {result.n_inserted} new and {result.n_updated} updated cases "
          f"into {args.db} (import {result.import_id})")
    if result.rejected:
        rejected_file = path.with_name(path.stem + ".rejected.csv")
        rejected_file.write_text(rejected_rows_csv(result.rejected), encoding="utf-8")
        print(f"{path}: skipped {len(result.rejected)} invalid rows; they and their reasons are in "
              f"{rejected_file}")
    return 0


def cmd_demo_data(args: argparse.Namespace) -> int:
    from rocore.synthetic import generate_cases, write_jsonl

    write_jsonl(generate_cases(args.n, args.seed), args.out)
    print(f"wrote {args.n} synthetic cases (seed {args.seed}) to {args.out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from rocore.demo import build_demo

    try:
        build_demo(args.db, args.workdir, n=args.n, seed=args.seed)
    except FileExistsError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


def cmd_regimen(args: argparse.Namespace) -> int:
    from rocore.regimen import parse_regimen

    parsed = parse_regimen(args.text).as_dict()
    if args.json:
        print(json.dumps(parsed, ensure_ascii=False))
        return 0
    if not parsed["components"]:
        print("no prescription found")
    for number, component in enumerate(parsed["components"], start=1):
        details = ", ".join(f"{k}={v}" for k, v in component.items() if v not in (None, [], "") and k != "text")
        print(f"{number}. {component['text']!r}: {details}")
    for warning in parsed["warnings"]:
        print(f"warning: {warning}")
    return 0


def _fractions(text: str) -> dict[str, float]:
    from rocore.splits import PARTS

    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError("expected three numbers such as 0.8,0.1,0.1") from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError("expected three numbers (train,validation,test)")
    return dict(zip(PARTS, values))


def cmd_split(args: argparse.Namespace) -> int:
    from rocore.splits import SplitError, create_split, find_leaks, list_splits, split_counts, split_id_by_name

    with opened(args.db) as conn:
        try:
            if args.action == "create":
                split_id = create_split(conn, args.name, args.seed, args.fractions)
                print(f"created split '{args.name}' (id {split_id})")
            if args.action in ("create", "show"):
                split_id = split_id_by_name(conn, args.name)
                for row in split_counts(conn, split_id):
                    print(f"{row['part']:<10} {row['modality']:<14} {row['n']:>6}")
                leaks = find_leaks(conn, split_id)
                for case_ids, parts in leaks:
                    print(f"leak: cases {', '.join(case_ids)} share a diagnosis text across "
                          f"{' and '.join(parts)}", file=sys.stderr)
                return 1 if leaks else 0
            for row in list_splits(conn):
                print(f"{row['split_id']:>3} {row['name']:<20} seed={row['seed']} "
                      f"cases={row['n_cases']} fractions={row['fractions']} {row['created_at']}")
        except SplitError as exc:
            print(exc, file=sys.stderr)
            return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rocore", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("import", help="import cases from CSV, TSV, .xlsx or JSON lines")
    p.add_argument("file", type=Path)
    _db_arg(p)
    p.add_argument("--map", action="append", default=[], type=_map_item, metavar="FIELD=COLUMN",
                   help="take FIELD (case_id, diagnosis, regimen, modality, icd10, site, age, sex, "
                        "laterality, stage, histology, ecog) from COLUMN; repeatable")
    p.add_argument("--update", action="store_true", help="replace stored cases with the same case_id")
    p.add_argument("--skip-invalid", action="store_true",
                   help="import the valid rows; write the others with reasons to FILE.rejected.csv")
    p.set_defaults(func=cmd_import)

    p = commands.add_parser("demo-data", help="write synthetic cases as JSON lines")
    p.add_argument("--n", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_demo_data)

    p = commands.add_parser("demo", help="build the embedded demo database")
    _db_arg(p)
    p.add_argument("--workdir", type=Path, default=Path("demo"))
    p.add_argument("--n", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)

    p = commands.add_parser("regimen", help="parse a free-text prescription")
    p.add_argument("text")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_regimen)

    p = commands.add_parser("split", help="create, show or list train/validation/test splits")
    p.add_argument("action", choices=("create", "show", "list"))
    _db_arg(p)
    p.add_argument("--name", default="default")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fractions", type=_fractions, default="0.8,0.1,0.1",
                   help="train,validation,test (default 0.8,0.1,0.1)")
    p.set_defaults(func=cmd_split)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SchemaError as exc:
        print(exc, file=sys.stderr)
        return 1
