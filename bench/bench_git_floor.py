"""What Git itself costs to check out a large file through a long-running filter process.

A minimal filter (below: pkt-lines, clean answers a fixed pointer, smudge answers the bytes of
one file from memory, written in 4 MiB writes) stands in for gitmld's, so the time measured is
Git's part of a checkout: reading the filter's pkt-lines into memory and writing the file. No
filter can make a `git clone` faster than this on the same machine.

    .venv/bin/python bench/bench_git_floor.py /tmp/bench-models/1GiB/base.safetensors
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FILTER = r'''
import fcntl, os, sys
fi, fo = sys.stdin.buffer, sys.stdout.buffer
for fd in (0, 1):
    try:
        fcntl.fcntl(fd, 1031, 1 << 20)  # F_SETPIPE_SZ, as gitmld's filter does
    except OSError:
        pass
def rd():
    h = fi.read(4)
    return None if not h else (b"" if int(h, 16) == 0 else fi.read(int(h, 16) - 4))
def wr(b): fo.write(b"%04x" % (len(b) + 4) + b)
def section():
    out = []
    while (p := rd()) not in (b"", None):
        out.append(p)
    return out
section(); wr(b"git-filter-server\n"); wr(b"version=2\n"); fo.write(b"0000"); fo.flush()
section(); wr(b"capability=clean\n"); wr(b"capability=smudge\n"); fo.write(b"0000"); fo.flush()
data = open(os.environ["FLOOR_CONTENT"], "rb").read()
while (head := section()) or fi.peek(1):
    section()
    wr(b"status=success\n"); fo.write(b"0000")
    body = memoryview(data if b"smudge" in b"".join(head) else b"pointer\n")
    buf = bytearray()
    for i in range(0, len(body), 65516):
        piece = body[i:i + 65516]
        buf += b"%04x" % (len(piece) + 4)
        buf += piece
        if len(buf) > 4 << 20:
            fo.write(buf)
            buf = bytearray()
    fo.write(buf); fo.write(b"00000000"); fo.flush()
'''


def main() -> None:
    content = Path(sys.argv[1])
    with tempfile.TemporaryDirectory(prefix="gitmld-git-floor-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "filter.py").write_text(FILTER)
        src = tmp / "src"
        env = dict(os.environ, FLOOR_CONTENT=str(content), GIT_CONFIG_GLOBAL="/dev/null")
        git = ["git", "-c", "user.name=b", "-c", "user.email=b@b", "-c",
               f"filter.floor.process={sys.executable} {tmp / 'filter.py'}"]
        subprocess.run(["git", "init", "-q", str(src)], check=True, env=env)
        (src / ".gitattributes").write_text("m.bin filter=floor\n")
        (src / "m.bin").write_bytes(b"pointer\n")
        subprocess.run([*git, "add", "."], cwd=src, check=True, env=env)
        subprocess.run([*git, "commit", "-qm", "m"], cwd=src, check=True, env=env)
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        subprocess.run([*git, "clone", "-q", str(src), str(tmp / "dst")], check=True, env=env)
        wall = time.perf_counter() - t
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        size = (tmp / "dst" / "m.bin").stat().st_size
        assert size == content.stat().st_size, size
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        print(f"git clone through a trivial filter: {size} bytes in {wall:.2f} s ({size / wall / 1e6:.0f} MB/s),"
              f" git + filter CPU {cpu:.2f} s, load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
