"""Summarise a mutmut run: score per module and every surviving mutant with its diff.

Writes benchmarks/mutation/RESULTS.md (the full run) or prints only (a selection, e.g. one
module in CI); exits 1 when the score of the checked mutants is under `--floor` (percent), or
without a floor when any selected mutant survived.
"""

from __future__ import annotations

import argparse
import fnmatch
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

OUT = Path(__file__).resolve().parent / "mutation" / "RESULTS.md"
TRIAGE = "## Triage"
MUTMUT = str(Path(sys.executable).parent / "mutmut")


def statuses() -> dict[str, str]:
    """mutant name -> status, from `mutmut results --all true`."""
    out = subprocess.run(
        [MUTMUT, "results", "--all", "true"], capture_output=True, text=True, check=True
    ).stdout
    found = {}
    for line in out.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and name.startswith("worker."):
            found[name] = status
    return found


def module_of(name: str) -> str:
    return name.split(".x_", 1)[0].split(".xǁ", 1)[0]


def diff(name: str) -> str:
    shown = subprocess.run([MUTMUT, "show", name], capture_output=True, text=True).stdout
    return "\n".join(x for x in shown.splitlines() if x[:2] in ("- ", "+ "))


def _row(module: str, counts: Counter[str]) -> str:
    n = sum(counts.values())
    unchecked = counts["not checked"]
    other = n - counts["killed"] - counts["survived"] - unchecked
    checked = n - unchecked
    score = counts["killed"] / checked if checked else 1.0
    cells = [module, n, counts["killed"], counts["survived"], unchecked, other, f"{score:.1%}"]
    return "| " + " | ".join(str(c) for c in cells) + " |"


def triage() -> str:
    """The hand-written triage of the survivors, kept from the previous results."""
    if not OUT.exists():
        return ""
    text = OUT.read_text()
    start = text.find(TRIAGE)
    return "" if start < 0 else "\n" + text[start:]


def score(counts: Counter[str]) -> float:
    """Killed among the checked, in percent (100 when none was checked)."""
    checked = sum(counts.values()) - counts["not checked"]
    return 100.0 * counts["killed"] / checked if checked else 100.0


def main(patterns: list[str], floor: float | None = None) -> int:
    found = statuses()
    if patterns:
        found = {n: s for n, s in found.items() if any(fnmatch.fnmatch(n, p) for p in patterns)}
    by_module: dict[str, Counter[str]] = defaultdict(Counter)
    for name, status in found.items():
        by_module[module_of(name)][status] += 1
    lines = [
        "| module | mutants | killed | survived | not checked | other | score of checked |",
        "|---|---|---|---|---|---|---|",
    ]
    total: Counter[str] = Counter()
    for module, counts in sorted(by_module.items()):
        lines.append(_row(module, counts))
        total.update(counts)
    lines.append(_row("**all**", total))
    survivors = sorted(name for name, status in found.items() if status == "survived")
    lines += ["", f"Surviving mutants: {len(survivors)}", ""]
    for name in survivors:
        lines += [f"- `{name}`", "  ```diff", *(f"  {x}" for x in diff(name).splitlines())]
        lines.append("  ```")
    text = "\n".join(lines) + "\n"
    print(text)
    if not patterns:
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text("# Mutation testing of worker/domain (make mutation)\n\n" + text + triage())
    if not found or total["not checked"] == sum(total.values()):
        print("no mutant was checked")
        return 1
    if floor is None:
        return 1 if survivors else 0
    print(f"score {score(total):.1f} % of checked, floor {floor:g} %")
    return 1 if score(total) < floor else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("patterns", nargs="*", help="mutant names, fnmatch patterns")
    parser.add_argument("--floor", type=float, help="lowest acceptable score, percent")
    args = parser.parse_args()
    sys.exit(main(args.patterns, args.floor))
