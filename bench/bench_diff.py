"""What `gitmld diff` of two commits reads: bytes through the daemon against the files' size.

Commits BASE then NEW (one repository, directory remote, pushed), then times
`gitmld diff --json HEAD~1 HEAD -- model.safetensors` twice:
  warm   on the host that committed (every chunk in its host cache)
  cold   on a second host (fresh cache, same keyfile, `git clone --no-checkout`): every byte
         the diff needs comes from the remote
and prints, from the daemon's stats: bytes_out (bytes the store served: headers + the tensors
that differ, both sides), range_chunk_bytes (whole chunks decoded for them) and
remote_get_bytes (fetched from the remote, compressed and encrypted).

Inputs: two bf16 checkpoints that differ in ~10% of their tensors, e.g.
  python ../shared/anchor-bench/gen_model.py base --size 1GiB --out /tmp/bench-models/1GiB/base.safetensors
  python ../shared/anchor-bench/gen_model.py finetune --base /tmp/bench-models/1GiB/base.safetensors \\
      --out /tmp/bench-models/1GiB/v2.safetensors
Usage:
  .venv/bin/python bench/bench_diff.py /tmp/bench-models/1GiB/base.safetensors /tmp/bench-models/1GiB/v2.safetensors
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.integration.gitenv import GitEnv  # noqa: E402
from tests.integration.test_git_workflow import copy_keyfile, stats_for  # noqa: E402

MODEL = "model.safetensors"


def measure(genv: GitEnv, work: Path, url: str) -> dict[str, float]:
    before = stats_for(genv, url) if genv.status().get("remotes") else {}
    t0 = time.perf_counter()
    out = genv.gitmld("diff", "--json", "HEAD~1", "HEAD", "--", MODEL, cwd=work).stdout
    seconds = time.perf_counter() - t0
    after = stats_for(genv, url)
    report = json.loads(out)
    row: dict[str, float] = {k: after[k] - before.get(k, 0)
                             for k in ("bytes_out", "range_chunk_bytes", "remote_get_bytes", "range_reads")}
    row["seconds"] = seconds
    row["changed"] = sum(1 for c in report["changes"] if c["status"] == "changed")
    row["other_changes"] = len(report["changes"]) - row["changed"]
    row["unchanged"] = report["unchanged"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base", type=Path)
    ap.add_argument("new", type=Path)
    args = ap.parse_args()
    total = args.base.stat().st_size + args.new.stat().st_size
    root = Path(tempfile.mkdtemp(prefix="gitmld-bench-diff-"))
    one = GitEnv.create(root / "host1")
    two = GitEnv.create(root / "host2")
    one.start_daemon()
    try:
        url = (root / "remote").as_uri()
        work = one.new_repo("w", url, None)
        for name, src in (("base", args.base), ("new", args.new)):
            shutil.copy(src, work / MODEL)
            one.git("add", MODEL, cwd=work)
            one.git("commit", "-q", "-m", name, cwd=work)
        one.git("push", "-q", "origin", "main", cwd=work)
        warm = measure(one, work, url)

        copy_keyfile(one, two)
        two.start_daemon()
        clone = root / "clone"
        two.git("clone", "-q", "--no-checkout", f"file://{root / 'host1' / 'w.git'}", str(clone), cwd=root)
        two.git("checkout", "HEAD", "--", ".gitattributes", ".gitmldconfig", cwd=clone)
        cold = measure(two, clone, url)

        print(f"{args.base.name} -> {args.new.name}: {total} bytes in the two files; "
              f"{int(warm['changed'])} tensors changed, {int(warm['other_changes'])} added/removed/retyped, "
              f"{int(warm['unchanged'])} unchanged\n")
        print("| run | wall time | bytes_out (read) | of both files | chunks decoded | fetched from remote |")
        print("|---|---|---|---|---|---|")
        for label, row in (("warm host cache", warm), ("cold host cache", cold)):
            print(f"| {label} | {row['seconds']:.2f} s | {int(row['bytes_out']):,} | "
                  f"{row['bytes_out'] / total:.2%} | {int(row['range_chunk_bytes']):,} | "
                  f"{int(row['remote_get_bytes']):,} |")
    finally:
        one.stop_daemon()
        two.stop_daemon()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
