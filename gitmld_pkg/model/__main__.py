"""`python -m gitmld.model diff|merge-driver ...`: the numpy side of `gitmld diff` and of the
merge driver. The `gitmld` command (client/cli.py, standard library only) checks the
arguments and its --help documents them, then replaces itself with this program, as it does
with the daemon: so the filter never imports numpy, and client/ never imports this package."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from gitmld.client.cli import connect, expected_errors


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gitmld.model", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("diff")
    d.add_argument("--json", action="store_true")
    d.add_argument("path")
    d.add_argument("revs", nargs="*")
    m = sub.add_parser("merge-driver")
    m.add_argument("--strategy", default=None)
    for name in ("base", "ours", "theirs"):
        m.add_argument(name, type=Path)
    m.add_argument("path")
    args = p.parse_args(argv)
    try:
        if args.command == "diff":
            from gitmld.model import diff

            sys.stdout.write(diff.run(args.revs, args.path, as_json=args.json, connect=connect))
            return 0
        from gitmld.model import merge

        return merge.merge(args.base, args.ours, args.theirs, args.path, strategy=args.strategy, connect=connect)
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        if not isinstance(e, expected_errors()):
            raise
        if args.command == "diff":
            print(f"gitmld: {e}", file=sys.stderr)
        else:  # any failure is a conflict for Git (%A still holds our pointer), never a half-merge
            print(f"gitmld: cannot merge {args.path}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
