"""``course``: the authors' and instructors' command line.

Authors:      course generate [--check] | course execute [CHAPTER ...] | course book
Instructors:  course release | collect | autograde | feedback | export   (see ``course -h``)
"""

from __future__ import annotations

import argparse
import sys

from . import source
from .project import find_root


def _cmd_generate(args: argparse.Namespace) -> int:
    from .generate import generate

    try:
        changed = generate(find_root(), check=args.check)
    except source.ChapterSourceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        if changed:
            print("stale student editions (run `course generate`):", *changed, sep="\n  ", file=sys.stderr)
            return 1
        print("student editions are up to date")
    else:
        print(f"wrote {len(changed)} file(s)" if changed else "nothing to do: up to date")
        for path in changed:
            print(" ", path)
    return 0


def _cmd_execute(args: argparse.Namespace) -> int:
    from .execute import execute_all

    root = find_root()
    sources = source.chapter_sources(root)
    if args.chapters:
        sources = [p for p in sources if any(p.stem.startswith(c) for c in args.chapters)]
        if not sources:
            print(f"error: no chapter matches {args.chapters}", file=sys.stderr)
            return 2
    results = execute_all(sources, root, force=args.force, workers=args.workers)
    for r in results:
        print(f"{r.chapter}: {'cached' if r.cached else 'executed'} {r.seconds:.1f} s"
              f"{'  FAILED' if r.error else ''}  -> {r.path}")
        if r.error:
            print(r.error, file=sys.stderr)
    return 1 if any(r.error for r in results) else 0


def _cmd_book(args: argparse.Namespace) -> int:
    from .site import build

    try:
        build(find_root(), workers=args.workers)
    except source.ChapterSourceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="course", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="write chapters/ (student editions) from solutions/")
    p.add_argument("--check", action="store_true", help="only report stale files; exit 1 if any")
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("execute", help="execute instructor editions into the shared cache")
    p.add_argument("chapters", nargs="*", help="chapter numbers or names (default: all)")
    p.add_argument("--force", action="store_true", help="ignore the cache")
    p.add_argument("--workers", type=int, default=1)
    p.set_defaults(func=_cmd_execute)

    p = sub.add_parser("book", help="execute (cached) and build the website")
    p.add_argument("--workers", type=int, default=1)
    p.set_defaults(func=_cmd_book)

    try:
        from .grading.cli import register
    except ImportError:  # grading extras not installed
        register = None
    if register is not None:
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
