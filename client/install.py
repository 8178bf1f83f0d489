"""What `gitmld install` writes: git config for the filter, diff and merge drivers, and the pre-push hook.

Shared by the CLI and by the filter process, which adds the hook to clones that lack it.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from gitmld.client.errors import CommandError
from gitmld.client.gitconfig import run_git

HOOK_MARKER = "# gitmld pre-push hook"


def self_command(module: str = "gitmld.client.cli") -> str:
    """A shell command that runs this gitmld with this Python, independent of PATH."""
    return shlex.join([sys.executable, "-m", module])


def git_settings() -> dict[str, str]:
    """The git config `gitmld install` writes (clean/smudge are not needed with `process`)."""
    return {
        "filter.gitmld.process": self_command("gitmld.client.filter_process"),
        "filter.gitmld.required": "true",
        "diff.gitmld.textconv": f"{self_command()} pointer-textconv",
        # Git smudges a blob before textconv sees it; caching the output per blob (in
        # refs/notes/textconv/gitmld) spares the old side that smudge and hash on every diff.
        "diff.gitmld.cachetextconv": "true",
        # Git hands the driver the three pointers (%O base, %A ours, %B theirs) and keeps what
        # it writes into %A; %P is the path. A non-zero exit leaves Git's conflict state.
        "merge.gitmld.name": "gitmld: merges safetensors models tensor by tensor",
        "merge.gitmld.driver": f"{self_command()} merge-driver %O %A %B %P",
    }


def hook_script() -> str:
    python = shlex.quote(sys.executable)
    return f"""#!/bin/sh
{HOOK_MARKER}: uploads the gitmld objects of the commits being pushed.
# Written by `gitmld install`; running it again rewrites this file.
if [ ! -x {python} ]; then
    echo >&2 "gitmld: {sys.executable} is missing, so the pre-push hook cannot upload gitmld objects."
    echo >&2 "gitmld: reinstall gitmld and run 'gitmld install' again (or delete this hook: $0)."
    exit 1
fi
exec {self_command()} pre-push "$@"
"""


def repo_git_dir() -> Path | None:
    proc = run_git(["rev-parse", "--absolute-git-dir"], ok_codes=(0, 128))
    return Path(proc.stdout.decode().strip()) if proc.returncode == 0 else None


def hook_path() -> Path:
    """Where Git looks for the pre-push hook (honours core.hooksPath and linked worktrees)."""
    out = run_git(["rev-parse", "--git-path", "hooks/pre-push"]).stdout.decode().strip()
    return Path.cwd() / out


def install_hook(*, force: bool = False) -> Path:
    """Write the pre-push hook; never silently replace someone else's (like Git LFS)."""
    path = hook_path()
    script = hook_script()
    if path.exists():
        current = path.read_text(errors="replace")
        if HOOK_MARKER not in current:
            if not force:
                raise CommandError(
                    f"a pre-push hook that is not gitmld's already exists: {path}\n"
                    "gitmld left it as it is, so gitmld objects will NOT be uploaded on push. Either:\n"
                    "  - call gitmld from that hook, giving it the hook's arguments and standard input:\n"
                    f"        {self_command()} pre-push \"$@\" || exit 1\n"
                    "  - or run `gitmld install --force` to replace it (the old hook is kept as "
                    "pre-push.gitmld-backup)"
                )
            path.replace(path.with_name("pre-push.gitmld-backup"))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, script, mode=0o755)
    return path


def write_atomically(path: Path, text: str, *, mode: int | None = None) -> None:
    """Readers (git) see the old file or the new one, never half of it; the mode is kept
    unless one is given."""
    tmp = path.with_name(f".{path.name}.gitmld-{os.getpid()}")
    tmp.write_text(text)
    if mode is None and path.exists():
        mode = path.stat().st_mode & 0o777
    if mode is not None:
        tmp.chmod(mode)
    tmp.replace(path)


def ensure_hook() -> Path | None:
    """Add our pre-push hook to a repository that has none (a fresh clone), as Git LFS does.

    Never touches an existing hook; returns the path written, or None. Best effort: the filter
    calls this and must not fail a checkout because a hook could not be written.
    """
    try:
        path = hook_path()
        if path.exists():
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, hook_script(), mode=0o755)
        return path
    except (OSError, CommandError, RuntimeError, ValueError):
        return None
