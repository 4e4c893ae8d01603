"""Bad and hostile inputs through the command line and the API: does each one end the way the project promises?

The promise (README, "Command line"): bad input exits 2 (``ValueError`` in the API) with a one-line error and no
traceback; a signal exits 130 (SIGINT) or 143 (SIGTERM); an earlier result in the output folder survives whatever
happens; nothing in a file runs code. Each row runs one input in a fresh folder and prints:

- ``outcome``: the exit code (CLI rows) or the exception type (API rows; ``-`` when nothing was raised);
- ``1 line``: the error is one line and no traceback was printed;
- ``lost``: an earlier result in the output folder (weights, config, reports, ONNX) changed or vanished;
- ``ran``: a canary file that the hostile payload would create exists afterwards (code was executed);
- ``ok``: all four as promised. The script exits 1 when any row is not.

    python benchmarks/robustness.py [--only WORD] [--json results.json]

Takes a few minutes on 2 CPU cores (each CLI row is a fresh Python process that imports torch). The rows are the
table in benchmarks/robustness_cases.py (one :class:`Case` each), the inputs and runners they use are in
benchmarks/robustness_inputs.py; this file runs and judges them.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from robustness_cases import CASES, Case
from robustness_inputs import Files, Outcome, hashes, previous_result  # first: the torchvision guard and the zoo

__all__ = ["CASES", "Case", "Outcome", "Row", "main", "run_case"]


@dataclass
class Row:
    """One judged case: what happened, what was promised, and whether an earlier result or a payload was hit."""

    name: str
    via: str
    outcome: str
    expect: str
    one_line: bool
    lost: bool
    ran: bool
    ok: bool
    message: str = ""
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


def run_case(case: Case, files: Files, work: Path) -> Row:
    """Run one case in ``work`` and judge it."""
    work.mkdir(parents=True)
    out = work / "out"
    if case.guard:
        previous_result(files, out)
    before = hashes(out) if case.guard else {}
    start = time.perf_counter()
    try:
        result = case.run(files, work)
    except Exception as err:  # the harness itself failed on this row: say so, keep going
        result = Outcome(f"harness error {type(err).__name__}", False, str(err)[:300])
    after = hashes(out) if case.guard else {}
    lost = case.guard and any(after.get(name) != digest for name, digest in before.items())
    ran = (work / "CANARY").exists()
    ok = result.code in case.expect and result.one_line and not lost and not ran
    return Row(case.name, case.via, result.code, "/".join(case.expect), result.one_line, lost, ran, ok,
               result.message, round(time.perf_counter() - start, 1))


def _table(rows: list[Row]) -> str:
    head = "| # | input | via | outcome | expected | 1 line | lost | ran | ok |\n|---|---|---|---|---|---|---|---|---|"
    lines = [head]
    for i, r in enumerate(rows, 1):
        ok = "yes" if r.ok else "**NO**"
        lines.append(f"| {i} | {r.name} | {r.via} | {r.outcome} | {r.expect} | {_yn(r.one_line)} | {_yn(r.lost)} | "
                     f"{_yn(r.ran)} | {ok} |")
    return "\n".join(lines)


def _yn(flag: bool) -> str:
    return "yes" if flag else "no"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="run only the rows whose name contains this text")
    parser.add_argument("--json", help="also write the rows (with messages and times) to this file")
    parser.add_argument("--messages", action="store_true", help="print each row's last stderr line")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="njet-robustness-") as tmp:
        root = Path(tmp)
        files = Files(root / "files")
        cases = [c for c in CASES if not args.only or args.only in c.name]
        rows = []
        for i, case in enumerate(cases, 1):
            rows.append(run_case(case, files, root / f"case{i:02d}"))
            print(f"[{i}/{len(cases)}] {case.name}: {rows[-1].outcome} ({rows[-1].seconds} s)", file=sys.stderr)
    print(_table(rows))
    bad = [r for r in rows if not r.ok]
    print(f"\n{len(rows) - len(bad)}/{len(rows)} rows as promised.")
    if args.messages:
        for i, r in enumerate(rows, 1):
            print(f"{i:>3}. {r.message}")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
