"""`gitmld`: the command people and Git hooks run (argparse subcommands).

Exit codes: 0 success, 1 failure (the message names the file, object and cause and says what
to do), 2 usage. Standard library only; the daemon client and the filter are imported only by
the commands that need them, so `gitmld track` or `--help` start fast.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from gitmld.client import hooks
from gitmld.client.errors import CommandError
from gitmld.client.gitconfig import ConfigError, GitError, load_remote_config, repo_top, run_git
from gitmld.client.hooks import PointerBlob, PushError
from gitmld.client.install import (
    git_settings,
    install_hook,
    repo_git_dir,
    write_atomically,
)
from gitmld.client.progress import Progress, human_size, progress_enabled
from gitmld.proto import paths
from gitmld.proto.pointer import (
    MAX_POINTER_SIZE,
    Pointer,
    PointerError,
    is_lfs_pointer,
    looks_like_pointer,
)

TRACK_ATTRS = ("filter=gitmld", "diff=gitmld", "merge=gitmld", "-text")
WAIT_SECONDS = 30.0  # one `wait` round trip; the loop goes on while objects are pending
READ_SIZE = 1 << 20


# -- entry point ----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["daemon"]:
        exec_daemon(args_list[1:])  # the daemon parses (and documents, with --help) its own options
    parser = build_parser()
    args = parser.parse_args(args_list)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `gitmld ls-files | head`
        _silence_stdout()
        return 0
    except Exception as e:
        if not isinstance(e, expected_errors()):
            raise
        print(f"gitmld: {e}", file=sys.stderr)
        return 1


def expected_errors() -> tuple[type[BaseException], ...]:
    """Failures reported as one message and exit 1 (anything else is a bug: traceback)."""
    errors: list[type[BaseException]] = [CommandError, GitError, ConfigError, PushError, OSError]
    daemon_client = sys.modules.get("gitmld.client.daemon_client")  # only raised if imported
    if daemon_client is not None:
        errors.append(daemon_client.DaemonError)
    return tuple(errors)


class VersionAction(argparse.Action):
    """`--version`, looked up only when asked for (package metadata is slow to read)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the gitmld version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        print(f"gitmld {version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gitmld",
        description="Git for machine-learning models: large files go through a per-host daemon "
        "that chunks, dedups, compresses, encrypts and caches them.",
    )
    parser.add_argument("--version", action=VersionAction)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    def command(name: str, func: Callable[[argparse.Namespace], int], help: str,
                progress: bool = False) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func, parser=p)
        if progress:
            p.add_argument("--progress", action="store_true",
                           help="show progress on stderr even when it is not a terminal")
        return p

    p = command("install", cmd_install, "configure Git to use gitmld (filter, diff, pre-push hook)")
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("--local", action="store_true", help="this repository (the default)")
    scope.add_argument("--global", dest="global_", action="store_true",
                       help="the user's global git config; installs no hook")
    p.add_argument("--force", action="store_true",
                   help="replace a pre-push hook that is not gitmld's (kept as pre-push.gitmld-backup)")

    p = command("track", cmd_track, "store files matching PATTERN with gitmld (edits the .gitattributes at "
                "the repository top, so patterns are relative to it); without PATTERN, list the tracked patterns")
    p.add_argument("patterns", nargs="*", metavar="PATTERN", help="gitattributes pattern, e.g. '*.safetensors'")

    p = command("untrack", cmd_untrack, "stop storing files matching PATTERN with gitmld")
    p.add_argument("patterns", nargs="+", metavar="PATTERN")

    p = command("status", cmd_status, "show the daemon, the host cache, transfers and remotes")
    p.add_argument("--json", action="store_true", help="print the daemon's status document and client facts")

    command("daemon", cmd_daemon_help, "run the daemon in the foreground (options: gitmld daemon --help)")
    command("filter-process", cmd_filter_process, "the long-running Git filter (Git runs it, not people)")

    p = command("push", cmd_push, "upload the gitmld objects referenced by commits (default: HEAD)",
                progress=True)
    p.add_argument("--all", action="store_true", help="every object referenced by any ref")
    p.add_argument("refs", nargs="*", metavar="REF")

    p = command("pre-push", cmd_pre_push, "the pre-push hook: upload the objects of the pushed commits "
                "(reads Git's pre-push input on stdin)", progress=True)
    p.add_argument("remote", metavar="REMOTE")
    p.add_argument("url", metavar="URL", nargs="?", default="")

    p = command("prefetch", cmd_prefetch, "fetch the objects of REFs (default: HEAD) into the host cache",
                progress=True)
    p.add_argument("refs", nargs="*", metavar="REF")

    p = command("ls-files", cmd_ls_files, "list the gitmld files in the tree of REF (default: HEAD)")
    p.add_argument("ref", nargs="?", default="HEAD", metavar="REF")

    p = command("fsck", cmd_fsck, "check that every pointer in REF parses and its object is available",
                progress=True)
    p.add_argument("ref", nargs="?", default="HEAD", metavar="REF")
    p.add_argument("--verify", action="store_true", help="also read every object back and check its sha256")

    p = command("keygen", cmd_keygen, "create a keyfile: the key that encrypts the repository keys")
    p.add_argument("path", nargs="?", type=Path, metavar="PATH",
                   help="where to write it (default: GITMLD_KEYFILE or ~/.config/gitmld/keyfile)")
    p.add_argument("--force", action="store_true",
                   help="overwrite an existing keyfile (data encrypted under the old key becomes unreadable)")

    p = command("pointer-textconv", cmd_pointer_textconv,
                "print a pointer's text for `git diff` (diff.gitmld.textconv)")
    p.add_argument("file", type=Path, metavar="FILE")

    p = command("diff", cmd_diff, "what changed inside a safetensors model, per tensor (added, removed, new "
                "dtype or shape, values: L2 norm, relative and max change), reading only the tensors that "
                "differ: no REV compares HEAD with the worktree, one REV that commit with the worktree, two "
                "REVs the two commits")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("args", nargs=argparse.REMAINDER, metavar="[REV [REV]] -- PATH",
                   help="options go before the revisions")

    p = command("merge-driver", cmd_merge_driver, "the safetensors merge driver (Git runs it as merge.gitmld.driver "
                "with %%O %%A %%B %%P): merges tensor by tensor, writes the merged pointer into %%A")
    p.add_argument("base", type=Path, metavar="BASE", help="%%O: the common ancestor's pointer (empty if none)")
    p.add_argument("ours", type=Path, metavar="OURS", help="%%A: our pointer; receives the result")
    p.add_argument("theirs", type=Path, metavar="THEIRS", help="%%B: their pointer")
    p.add_argument("path", metavar="PATH", help="%%P: the file's path, for messages")
    p.add_argument("--strategy", choices=("conflict", "ours", "theirs", "average"), default=None,
                   help="resolve tensors changed on both sides (default: gitmld.mergeStrategy, else conflict)")

    command("version", cmd_version, "print the gitmld version")
    return parser


# -- install -------------------------------------------------------------------------------------


def cmd_install(args: argparse.Namespace) -> int:
    scope = "--global" if args.global_ else "--local"
    if scope == "--local" and repo_git_dir() is None:
        raise CommandError("not inside a Git repository; cd into one, or use `gitmld install --global`")
    for key, value in git_settings().items():
        run_git(["config", scope, "--replace-all", key, value])
    print(f"gitmld: Git configured ({scope[2:]}): filter.gitmld, diff.gitmld, merge.gitmld")
    if scope == "--global":
        print("gitmld: run `gitmld install` in each repository to add its pre-push hook")
        return 0
    path = install_hook(force=args.force)
    print(f"gitmld: pre-push hook installed: {path}")
    return 0


# -- track / untrack ----------------------------------------------------------------------------


def escape_pattern(pattern: str) -> str:
    """gitattributes splits on whitespace: spell spaces as a character class, like Git LFS."""
    return pattern.replace(" ", "[[:space:]]")


def unescape_pattern(pattern: str) -> str:
    return pattern.replace("[[:space:]]", " ")


def check_pattern(pattern: str) -> None:
    if not pattern.strip():
        raise CommandError("empty pattern; give a gitattributes pattern such as '*.safetensors'")
    if pattern.startswith(("!", "#")):
        raise CommandError(
            f"pattern {pattern!r}: gitattributes does not allow negative patterns, and '#' starts a "
            "comment; use `gitmld untrack` to stop tracking"
        )
    if "\n" in pattern or "\t" in pattern:
        raise CommandError(f"pattern {pattern!r} contains a newline or tab")


def split_line(line: str) -> tuple[str, list[str]] | None:
    """(pattern, attributes) of a .gitattributes line; None for blanks and comments."""
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return None
    pattern, *attrs = stripped.split()
    return pattern, attrs


def tracked_patterns(text: str) -> list[str]:
    """The patterns that a .gitattributes text assigns to the gitmld filter."""
    out = []
    for line in text.splitlines():
        parsed = split_line(line)
        if parsed and "filter=gitmld" in parsed[1]:
            out.append(unescape_pattern(parsed[0]))
    return out


def add_patterns(text: str, patterns: Iterable[str]) -> tuple[str, list[str], list[str]]:
    """Append a tracking line per new pattern. Returns (text, added, already tracked)."""
    added: list[str] = []
    present: list[str] = []
    existing = set(tracked_patterns(text))
    lines = [] if not text else [text if text.endswith("\n") else text + "\n"]
    for pattern in patterns:
        if pattern in existing:
            present.append(pattern)
            continue
        existing.add(pattern)
        added.append(pattern)
        lines.append(" ".join([escape_pattern(pattern), *TRACK_ATTRS]) + "\n")
    return "".join(lines), added, present


def remove_patterns(text: str, patterns: Iterable[str]) -> tuple[str, list[str]]:
    """Drop gitmld's attributes from the lines of these patterns, keeping any other attributes
    and every other line. Returns (text, removed)."""
    wanted = {escape_pattern(p) for p in patterns}
    removed: list[str] = []
    out = []
    for line in text.splitlines(keepends=True):
        parsed = split_line(line)
        if parsed and parsed[0] in wanted and "filter=gitmld" in parsed[1]:
            removed.append(unescape_pattern(parsed[0]))
            rest = [a for a in parsed[1] if a not in TRACK_ATTRS]
            if rest:
                out.append(" ".join([parsed[0], *rest]) + "\n")
            continue
        out.append(line)
    return "".join(out), removed


def require_top() -> Path:
    top = repo_top()
    if top is None:
        raise CommandError("not inside a Git worktree; cd into a repository")
    return top


def attributes_file(top: Path) -> Path:
    return top / ".gitattributes"


def cmd_track(args: argparse.Namespace) -> int:
    top = require_top()
    path = attributes_file(top)
    text = path.read_text() if path.exists() else ""
    if not args.patterns:
        listing = tracked_patterns(text)
        print("Tracked patterns:" if listing else "No patterns are tracked; add one with `gitmld track PATTERN`")
        for pattern in listing:
            print(f"    {pattern} ({path.name})")
        return 0
    for pattern in args.patterns:
        check_pattern(pattern)
    new_text, added, present = add_patterns(text, args.patterns)
    for pattern in present:
        print(f"gitmld: {pattern!r} is already tracked")
    if added:
        write_atomically(path, new_text)
        for pattern in added:
            print(f"gitmld: tracking {pattern!r}")
        hint_renormalize(top)
    return 0


def cmd_untrack(args: argparse.Namespace) -> int:
    top = require_top()
    path = attributes_file(top)
    text = path.read_text() if path.exists() else ""
    new_text, removed = remove_patterns(text, args.patterns)
    if removed:
        write_atomically(path, new_text)
    for pattern in args.patterns:
        state = "untracked" if pattern in removed else "was not tracked"
        print(f"gitmld: {pattern!r} {state}")
    return 0


def hint_renormalize(top: Path) -> None:
    """Files already in the index as content (not pointers) stay so until they are re-added."""
    listing = run_git(["ls-files", "-s", "-z", ":(attr:filter=gitmld)"], cwd=top).stdout
    staged = []
    for record in listing.split(b"\0"):
        meta, _, name = record.partition(b"\t")
        fields = meta.split()
        if len(fields) == 3:
            staged.append((fields[1].decode(), name.decode(errors="surrogateescape")))
    if not staged:
        return
    sizes = hooks.object_info([blob for blob, _ in staged], cwd=top)
    small = [(blob, name) for blob, name in staged if sizes.get(blob, ("", MAX_POINTER_SIZE))[1] < MAX_POINTER_SIZE]
    pointers = {p.blob for p in hooks.iter_pointers(small, cwd=top)}  # never reads large blobs
    content = [name for blob, name in staged if blob not in pointers]
    if content:
        shown = ", ".join(content[:3]) + (", ..." if len(content) > 3 else "")
        print(f"gitmld: {len(content)} file(s) already in the index are stored as plain Git content "
              f"({shown}); run `git add --renormalize .` to store them with gitmld")


# -- status ---------------------------------------------------------------------------------------


def client_facts() -> dict[str, Any]:
    """What the client knows without the daemon: where it would talk and which remote it would use."""
    facts: dict[str, Any] = {
        "version": version(),
        "socket": str(paths.socket_path()),
        "cache_dir": str(paths.cache_dir()),
        "remote": None,
    }
    try:
        if repo_top() is not None:
            facts["remote"] = load_remote_config().to_json()
    except (ConfigError, GitError) as e:
        facts["config_error"] = str(e)
    return facts


def cmd_status(args: argparse.Namespace) -> int:
    from gitmld.client.daemon_client import DaemonClient, DaemonUnavailable

    facts = client_facts()
    try:
        with DaemonClient.connect(facts["socket"], autostart=False, timeout=3.0) as client:
            doc = client.request("status")
    except DaemonUnavailable as e:
        if args.json:
            print(json.dumps({"running": False, "error": str(e), "client": facts}, indent=2))
        else:
            print(f"gitmld daemon: not running: {e}", file=sys.stderr)
            print(render_status(None, facts))
        return 1
    if args.json:
        print(json.dumps({"running": True, **doc, "client": facts}, indent=2))
    else:
        print(render_status(doc, facts))
    return 0


def render_status(doc: dict[str, Any] | None, facts: dict[str, Any]) -> str:
    """Aligned sections; tolerant of keys the daemon does not (yet) report."""
    sections: list[tuple[str, list[tuple[str, str]]]] = []
    if doc is None:
        sections.append(("Daemon", [
            ("state", "not running"),
            ("socket", facts["socket"]),
            ("start it", "gitmld daemon  |  systemctl --user start gitmld.socket  |  any git add"),
        ]))
    else:
        remotes = doc.get("remotes") or []
        stats = [r.get("stats") or {} for r in remotes]
        hits = sum(int(s.get("cache_hits", 0)) for s in stats)
        misses = sum(int(s.get("cache_misses", 0)) for s in stats)
        sections.append(("Daemon", [
            ("state", f"running, gitmld {doc.get('version', '?')}"),
            ("pid", str(doc.get("pid", "?"))),
            ("uptime", human_duration(float(doc.get("uptime_seconds", 0)))),
            ("socket", str(doc.get("socket", facts["socket"]))),
            ("connections", f"{doc.get('connections', '?')} open, {doc.get('requests_served', '?')} requests served"),
        ]))
        size, limit = doc.get("cache_bytes"), doc.get("cache_limit_bytes")
        used = human_size(size) if isinstance(size, int) else "?"
        if isinstance(limit, int) and limit:
            used += f" of {human_size(limit)}"
            if isinstance(size, int):
                used += f" ({size * 100 // limit}%)"
        ratio = f"{hits * 100 / (hits + misses):.1f}% ({hits} hits, {misses} misses)" if hits + misses else "-"
        sections.append(("Cache", [
            ("directory", str(doc.get("cache_dir", facts["cache_dir"]))),
            ("size", used),
            ("hit ratio", ratio),
        ]))
        queue = sum(int(s.get("upload_queue", 0)) for s in stats)
        queue_bytes = sum(int(s.get("upload_queue_bytes", 0)) for s in stats)
        transfers = [(f"  {t.get('direction', '?')}", describe_transfer(t)) for t in doc.get("transfers", [])]
        sections.append(("Transfers", [
            ("upload queue", f"{queue} object(s) waiting" + (f" ({human_size(queue_bytes)})" if queue else "")),
            ("in flight", str(len(transfers)) if transfers else "none"),
            *transfers,
        ]))
        rows: list[tuple[str, str]] = []
        for remote, s in zip(remotes, stats, strict=True):
            rows += [
                (str(remote.get("url", "?")), ""),
                ("  state", describe_reachability(remote)),
                ("  downloaded", f"{human_size(int(s.get('remote_get_bytes', 0)))} in {s.get('remote_gets', 0)} gets"),
                ("  uploaded", f"{human_size(int(s.get('remote_put_bytes', 0)))} in {s.get('remote_puts', 0)} puts"),
            ]
        sections.append(("Remotes", rows or [("none", "no repository has used the daemon yet")]))
    repo: list[tuple[str, str]] = []
    if facts.get("remote"):
        repo.append(("remote", str(facts["remote"].get("url"))))
    if facts.get("config_error"):
        repo.append(("config error", facts["config_error"]))
    if repo:
        sections.append(("This repository", repo))
    sections.append(("Client", [("version", facts["version"]), ("socket", facts["socket"]),
                                ("cache dir", facts["cache_dir"])]))
    return format_sections(sections)


def describe_transfer(t: dict[str, Any]) -> str:
    """`model.bin (sha256:abababababab): 45% (7.20 MiB/16.0 MiB), 2.10 MiB/s, 4.0 s` or
    `pack 9a2505e4647b: 0% (0 bytes/995 KiB), 0.7 s`."""
    what = str(t.get("what") or "?")
    if what.startswith("sha256:"):
        what = what[:19]
    elif t.get("kind") == "pack":
        what = what.rsplit("/", 1)[-1][:12]  # data/9a/9a2505e4...: the pack id is enough
    label = f"{t['path']} ({what})" if t.get("path") else f"{t.get('kind', '')} {what}".strip()
    parts = [label]
    done, total = t.get("done"), t.get("total")
    if isinstance(done, int) and isinstance(total, int) and total:
        parts[0] += f": {min(100, done * 100 // total)}% ({human_size(done)}/{human_size(total)})"
    elif isinstance(done, int):
        parts[0] += f": {human_size(done)}"
    if isinstance(t.get("rate"), int | float) and done:  # nothing done yet: no rate to speak of
        parts.append(f"{human_size(t['rate'])}/s")
    if "seconds" in t:
        parts.append(f"{t['seconds']} s")
    return ", ".join(parts)


def describe_reachability(remote: dict[str, Any]) -> str:
    reachable = remote.get("reachable")
    if reachable is True:
        ms = remote.get("probe_ms")
        return f"reachable ({ms:g} ms)" if isinstance(ms, int | float) else "reachable"
    if reachable is False:
        return f"UNREACHABLE: {remote.get('error') or 'no reason given'}"
    return "not probed yet"


def format_sections(sections: Sequence[tuple[str, Sequence[tuple[str, str]]]]) -> str:
    """Titles, then `key  value` rows with all values in one column; a row without a value
    (a remote's URL) is a sub-heading and does not widen the column."""
    width = max((len(k) for _, rows in sections for k, v in rows if v), default=0) + 2
    out = []
    for title, rows in sections:
        out.append(title)
        out += [f"  {key:<{width}}{value}".rstrip() for key, value in rows]
    return "\n".join(out)


def human_duration(seconds: float) -> str:
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {s}s"
    return f"{s}s"


# -- daemon / filter ----------------------------------------------------------------------------


def exec_daemon(argv: Sequence[str]) -> NoReturn:
    """Replace this process with the daemon (the daemon's own code lives in gitmld.daemon)."""
    os.execv(sys.executable, [sys.executable, "-m", "gitmld.daemon", *argv])


def cmd_daemon_help(args: argparse.Namespace) -> int:  # pragma: no cover - main() execs first
    exec_daemon([])


def cmd_filter_process(args: argparse.Namespace) -> int:
    from gitmld.client import filter_process

    return filter_process.main([])  # its own argv parsing would see "filter-process"


# -- push / pre-push ------------------------------------------------------------------------------


def cmd_push(args: argparse.Namespace) -> int:
    if args.all and args.refs:
        args.parser.error("give either --all or REFs, not both")  # exits 2
    require_top()
    revs = ["--all"] if args.all else (args.refs or ["HEAD"])
    return push_objects(revs, show=progress_enabled(args.progress), quiet_if_none=False)


def cmd_pre_push(args: argparse.Namespace) -> int:
    updates = hooks.parse_pre_push(sys.stdin)
    revs = hooks.push_revisions(updates, args.remote)
    return push_objects(revs, show=progress_enabled(args.progress), quiet_if_none=True)


def push_objects(revs: Sequence[str], *, show: bool, quiet_if_none: bool) -> int:
    """Find the pointers in `revs` and have the daemon make their objects durable."""
    objects = hooks.unique_objects(hooks.pointers_in_revs(revs)) if revs else {}
    if not objects:
        if not quiet_if_none:
            print("gitmld: no gitmld objects to upload", file=sys.stderr)
        return 0
    config = load_remote_config()
    meter = Progress("Uploading gitmld objects", enabled=show, bytes_mode=True)
    with connect() as client:
        answer = hooks.upload(client, config.to_json(), objects, progress_callback(meter))
    meter.finish()
    uploaded = int(answer.get("uploaded_bytes", 0))
    print(f"gitmld: {len(objects)} object(s) durable in {config.url} ({human_size(uploaded)} uploaded)",
          file=sys.stderr)
    return 0


def progress_callback(meter: Progress) -> Callable[[dict[str, Any]], None]:
    """Feed daemon PROGRESS frames (`done`, `total`, `unit`) to a meter."""

    def on_progress(frame: dict[str, Any]) -> None:
        done, total = frame.get("done"), frame.get("total")
        if not isinstance(done, int):
            return
        meter.bytes_mode = frame.get("unit", "bytes") == "bytes"
        nbytes = frame.get("bytes")
        meter.update(done, total=total if isinstance(total, int) else None,
                     nbytes=nbytes if isinstance(nbytes, int) else None)

    return on_progress


def connect() -> Any:
    """A daemon connection, starting the daemon if none answers (unless GITMLD_NO_AUTOSTART)."""
    from gitmld.client.daemon_client import DaemonClient

    return DaemonClient.connect()


# -- prefetch -----------------------------------------------------------------------------------


def pointers_of_refs(refs: Sequence[str]) -> dict[str, PointerBlob]:
    found: dict[str, PointerBlob] = {}
    for ref in refs:
        for oid, p in hooks.unique_objects(hooks.pointers_in_tree(ref)).items():
            found.setdefault(oid, p)
    return found


def cmd_prefetch(args: argparse.Namespace) -> int:
    require_top()
    objects = pointers_of_refs(args.refs or ["HEAD"])
    if not objects:
        print("gitmld: no gitmld objects to fetch", file=sys.stderr)
        return 0
    remote = load_remote_config().to_json()
    meter = Progress("Fetching gitmld objects", total=len(objects), enabled=progress_enabled(args.progress))
    failed: dict[str, str] = {}
    done_bytes = 0
    with connect() as client:
        client.request("fetch", remote=remote, oids=sorted(objects))
        pending = set(objects)
        while pending:
            answer = client.request("wait", remote=remote, oids=sorted(pending), timeout=WAIT_SECONDS)
            for oid in answer.get("ready", []):
                if oid in pending:
                    pending.discard(oid)
                    done_bytes += objects[oid].pointer.size
            for oid, message in (answer.get("failed") or {}).items():
                if oid in pending:
                    pending.discard(oid)
                    failed[oid] = str(message)
            meter.update(len(objects) - len(pending), nbytes=done_bytes)
    meter.finish()
    if failed:
        lines = [f"{len(failed)} of {len(objects)} object(s) could not be fetched:"]
        lines += [f"  {objects[oid].path} ({oid[7:19]}): {msg}" for oid, msg in sorted(failed.items())]
        lines.append("gitmld: check the remote with `gitmld status`, then run `gitmld prefetch` again")
        raise CommandError("\n".join(lines))
    print(f"gitmld: {len(objects)} object(s) ({human_size(done_bytes)}) in the host cache", file=sys.stderr)
    return 0


# -- ls-files / fsck ------------------------------------------------------------------------------


def cmd_ls_files(args: argparse.Namespace) -> int:
    require_top()
    for p in sorted(hooks.pointers_in_tree(args.ref), key=lambda p: p.path):
        extra = [f"{k}={v}" for k in ("format", "params") if (v := p.pointer.get(k)) is not None]
        line = f"{p.pointer.oid[7:19]}  {human_size(p.pointer.size):>10}  {p.path}"
        print("  ".join([line, *extra]))
    return 0


def cmd_fsck(args: argparse.Namespace) -> int:
    require_top()
    problems: list[str] = []

    def bad(b: hooks.BadPointer) -> None:
        problems.append(f"{b.path}: damaged pointer (blob {b.blob[:12]}): {b.error}")

    pointers = list(hooks.pointers_in_tree(args.ref, bad=bad))
    objects = hooks.unique_objects(pointers)
    if objects:
        remote = load_remote_config().to_json()
        meter = Progress("Checking gitmld objects", total=len(objects), enabled=progress_enabled(args.progress))
        checked_bytes = 0
        with connect() as client:
            for n, p in enumerate(sorted(objects.values(), key=lambda p: p.path), start=1):
                problem = check_object(client, remote, p, verify=args.verify)
                if problem:
                    problems.append(problem)
                checked_bytes += p.pointer.size if args.verify else 0
                meter.update(n, nbytes=checked_bytes if args.verify else None)
        meter.finish()
    for problem in problems:
        print(f"gitmld fsck: {problem}")
    if problems:
        print(f"gitmld fsck: {len(problems)} problem(s) in {len(pointers)} pointer(s) of {args.ref}",
              file=sys.stderr)
        return 1
    print(f"gitmld fsck: {len(pointers)} pointer(s), {len(objects)} object(s) of {args.ref}: ok", file=sys.stderr)
    return 0


def check_object(client: Any, remote: dict[str, Any], p: PointerBlob, *, verify: bool) -> str | None:
    """One problem line for this object, or None if it is fine."""
    from gitmld.client.daemon_client import DaemonError, DaemonUnavailable

    where = f"{p.path} ({p.pointer.oid})"
    try:
        if not client.request("has", remote=remote, oid=p.pointer.oid, local=False).get("present"):
            return f"{where}: missing from the host cache and the remote; push it from a checkout that has it"
        if not verify:
            return None
        digest = hashlib.sha256()
        size = 0
        for data in client.get(remote, p.pointer.oid, p.pointer.size, p.path):
            digest.update(data)
            size += len(data)
    except DaemonUnavailable:
        raise
    except DaemonError as e:
        return f"{where}: {e}"
    if size != p.pointer.size or f"sha256:{digest.hexdigest()}" != p.pointer.oid:
        return f"{where}: content read back is {size} bytes with sha256 {digest.hexdigest()}; it is corrupt"
    return None


# -- keygen ---------------------------------------------------------------------------------------


def cmd_keygen(args: argparse.Namespace) -> int:
    path = args.path or paths.default_keyfile()
    path = Path(os.path.expanduser(path)).absolute()
    from gitmld.proto.keyfile import KeyFileError, create_keyfile, kek_id

    try:
        key = create_keyfile(path, force=args.force)
    except KeyFileError as e:
        raise CommandError(f"{e}; use another PATH, or --force if you really mean to replace it") from None
    print(f"keyfile: {path}")
    print(f"key id:  {kek_id(key)}")
    print("Keep a copy somewhere safe: without it the data in the remote cannot be decrypted.", file=sys.stderr)
    return 0


# -- diff / merge-driver --------------------------------------------------------------------------


def split_diff_args(args: Sequence[str]) -> tuple[list[str], str]:
    """`[REV [REV]] -- PATH` (or `[REV [REV]] PATH`: then the last argument is the path)."""
    if "--" in args:
        i = list(args).index("--")
        revs, paths = list(args[:i]), list(args[i + 1 :])
    else:
        revs, paths = list(args[:-1]), list(args[-1:])
    if len(paths) != 1:
        raise CommandError("give exactly one PATH: gitmld diff [REV [REV]] -- PATH")
    if len(revs) > 2:
        raise CommandError(f"at most two revisions, got {len(revs)}: gitmld diff [REV [REV]] -- PATH")
    for rev in revs:
        if rev.startswith("-"):
            raise CommandError(f"{rev!r}: options go before the revisions (gitmld diff --json REV -- PATH)")
    return revs, paths[0]


def cmd_diff(args: argparse.Namespace) -> int:
    require_top()
    revs, path = split_diff_args(args.args)
    path = os.path.relpath(path) if os.path.isabs(path) else path  # git's REV:./PATH is relative to cwd
    exec_model(["diff", *(["--json"] if args.json else []), "--", path, *revs])


def cmd_merge_driver(args: argparse.Namespace) -> int:
    strategy = ["--strategy", args.strategy] if args.strategy else []
    exec_model(["merge-driver", *strategy, "--", str(args.base), str(args.ours), str(args.theirs), args.path])


def exec_model(argv: Sequence[str]) -> NoReturn:
    """Replace this process with `python -m gitmld.model` (numpy: only these commands load it)."""
    os.execv(sys.executable, [sys.executable, "-m", "gitmld.model", *argv])


# -- pointer-textconv / version -------------------------------------------------------------------


def cmd_pointer_textconv(args: argparse.Namespace) -> int:
    sys.stdout.write(textconv(args.file))
    return 0


def textconv(path: Path) -> str:
    """What `git diff` shows for a gitmld file: its pointer text, model description included.

    Git hands textconv the smudged content (it converts blobs to their worktree form first), so
    the content is cleaned through the daemon, exactly as `git add` would, and the resulting
    pointer is shown: a diff then lists which tensors changed. Git already cleans a modified
    worktree file for `git diff`, and the daemon stores each chunk once, so this costs hashing,
    not space. Without a daemon, one line with the content's sha256 and size is shown instead.
    A pointer (an unsmudged checkout, `git show` of a blob) is shown as its text.
    """
    with open(path, "rb") as f:
        head = f.read(MAX_POINTER_SIZE + 1)
        if looks_like_pointer(head) or is_lfs_pointer(head):
            try:
                if looks_like_pointer(head):
                    Pointer.parse(head)
                return head.decode("utf-8", errors="replace")
            except PointerError as e:
                return f"gitmld: damaged pointer: {e}\n{head.decode('utf-8', errors='replace')}"
    from gitmld.client.daemon_client import DaemonError

    try:
        return pointer_text_via_daemon(path)
    except (DaemonError, ConfigError, GitError) as e:
        return f"{content_summary(path)}(no description: {e})\n"


def pointer_text_via_daemon(path: Path) -> str:
    """Clean the file through the daemon and return the pointer text it answers."""
    from gitmld.client.daemon_client import DaemonClient

    remote = load_remote_config().to_json()
    client = DaemonClient.connect()
    try:
        with open(path, "rb") as f:
            answer = client.put(remote, str(path), iter(lambda: f.read(READ_SIZE), b""))
    finally:
        client.close()
    return str(answer["pointer"])


def content_summary(path: Path) -> str:
    """One line with the content's sha256 and size: changes exactly when the pointer's oid would."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while data := f.read(READ_SIZE):
            digest.update(data)
            size += len(data)
    return f"gitmld content: sha256:{digest.hexdigest()}, {human_size(size)} ({size} bytes)\n"


def version() -> str:
    from gitmld.proto.version import __version__

    return __version__


def cmd_version(args: argparse.Namespace) -> int:
    print(f"gitmld {version()}")
    return 0


def _silence_stdout() -> None:
    """After EPIPE on stdout, point it at /dev/null so the interpreter's final flush is quiet."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
