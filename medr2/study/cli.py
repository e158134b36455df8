"""`medr2 study create|readers|report|export`: the coordinator's commands for a reader study."""
from __future__ import annotations

import getpass
import sys
from pathlib import Path


def cli_study(argv: list[str]) -> int:
    """`medr2 study`: create a frozen study, manage its readers, report and export the results."""
    from medr2.cli import FlagParser, UsageError, fail
    from medr2.feedback.store import FeedbackError
    from medr2.study.manifest import StudyError

    parser = FlagParser(prog="medr2 study", description=cli_study.__doc__)
    sub = parser.add_subparsers(dest="action", required=True, metavar="{create,readers,report,export}")
    create = sub.add_parser("create", help="generate every report once and freeze the study folder")
    create.add_argument("--cases", required=True, help="folder of images, or a CSV / JSON manifest")
    create.add_argument("--sources", nargs="+", required=True,
                        help="model folders / hub ids, 'reference', or .jsonl files of precomputed reports")
    create.add_argument("--design", choices=("single", "ab", "multi"), default="single",
                        help="single review, blinded A/B of two sources, or blinded multi of 2-6 sources")
    create.add_argument("--output_dir", "--out", dest="output_dir", required=True, help="the new study folder")
    create.add_argument("--seed", type=int, default=None, help="randomisation seed (default: drawn and recorded)")
    create.add_argument("--batch_size", type=int, default=8, help="images generated at once")
    create.add_argument("--max_new_tokens", type=int, default=640, help="generation budget per report")
    create.add_argument("--study_id", default=None, help="study identifier (default: study-<UTC time>)")
    readers = sub.add_parser("readers", help="add or list the readers who may sign in")
    readers.add_argument("what", choices=("add", "list"))
    readers.add_argument("name", nargs="?", help="reader handle (add; optional with --hf_users)")
    readers.add_argument("--study_dir", required=True, help="the study folder")
    readers.add_argument("--password", default=None, help="the password (default: asked without echo, unless "
                                                           "--hf_users is given)")
    readers.add_argument("--hf_users", default=None,
                         help="comma-separated Hugging Face usernames allowed to sign in with Hugging Face (a Space "
                              "served with `app.py --sign_in hf`); with NAME, the one account that signs in as NAME, "
                              "else each account is a reader under its own username")
    readers.add_argument("--admin", action="store_true", help="may see the results tab")
    report = sub.add_parser("report", help="statistics, agreement, plots and the long export")
    report.add_argument("study_dir")
    report.add_argument("--output_dir", default=None, help="default: STUDY_DIR/results")
    exp = sub.add_parser("export", help="one CSV row per reader x case x source x item, plus a data dictionary")
    exp.add_argument("study_dir")
    exp.add_argument("--out", required=True, help="CSV file")
    try:
        args = parser.parse_args(argv)
        if args.action == "create":
            from medr2.study.create import create_study

            out = create_study(args.cases, args.sources, args.design, args.output_dir, seed=args.seed,
                               batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, study_id=args.study_id)
            print(f"study frozen in {out}; add readers with `medr2 study readers add NAME --study_dir {out}`")
            return 0
        from medr2.study.manifest import StudyFolder

        if args.action == "readers":
            from medr2.study.session import add_reader, load_readers

            StudyFolder.open(args.study_dir)
            if args.what == "list":
                for name, entry in sorted(load_readers(args.study_dir).items()):
                    ways = (["password"] if "hash" in entry else []) + (
                        [f"Hugging Face {entry['hf_user']}"] if entry.get("hf_user") else [])
                    print(name + (" (admin)" if entry.get("admin") else "") + ": " + ", ".join(ways))
                return 0
            role = "(admin) " if args.admin else ""
            if args.hf_users is not None:
                users = [u.strip() for u in args.hf_users.split(",") if u.strip()]
                if not users:
                    raise UsageError("--hf_users needs at least one Hugging Face username")
                if args.name and len(users) != 1:
                    raise UsageError(f"reader {args.name} signs in with one Hugging Face account, got {len(users)}")
                for user in users:
                    add_reader(args.study_dir, args.name or user, args.password, admin=args.admin, hf_user=user)
                    print(f"reader {args.name or user} {role}can sign in with Hugging Face as {user}")
                return 0
            if not args.name:
                raise UsageError("readers add needs a NAME (or --hf_users)")
            password = args.password or getpass.getpass(f"password for {args.name}: ")
            add_reader(args.study_dir, args.name, password, admin=args.admin)
            print(f"reader {args.name} {role}can sign in")
            return 0
        study = StudyFolder.open(args.study_dir)
        if args.action == "report":
            from medr2.study.analysis import markdown, write_report

            out = write_report(study, args.output_dir)
            print(markdown(__import__("json").loads((out / "report.json").read_text())))
            print(f"\nwritten to {out}")
            return 0
        from medr2.study.analysis import export

        n = export(study, args.out)
        print(f"wrote {n} rows to {args.out} (+ {Path(args.out).with_suffix('.dictionary.csv').name})")
        return 0
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    except (UsageError, StudyError, FeedbackError, OSError) as exc:
        return fail("medr2 study", exc)


if __name__ == "__main__":
    raise SystemExit(cli_study(sys.argv[1:]))
