"""Write ``benchmarks/results/README.md``: every benchmark's goals as one markdown table, then
each benchmark's printed tables (``NAME.txt``, its stdout) as they were printed.

``make bench`` runs every benchmark with its stdout saved to ``results/NAME.txt`` and its JSON in
``results/NAME.json``, then this script. Each JSON holds ``goals`` (name, measured, passed), the
package versions and the run's settings.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ORDER = (
    "conversion", "byom", "byom_serving", "agent", "service", "rollout", "commands", "dashboard",
    "drift",
)  # fmt: skip


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def summarise(results: Path) -> str:
    docs: list[tuple[str, dict[str, Any]]] = []

    def order(path: Path) -> tuple[int, str]:
        return (ORDER.index(path.stem) if path.stem in ORDER else len(ORDER), path.stem)

    for path in sorted(results.glob("*.json"), key=order):
        try:
            docs.append((path.stem, json.loads(path.read_text())))
        except (OSError, ValueError) as e:
            print(f"skipped {path}: {e}", file=sys.stderr)
    lines = [
        "# Benchmark results",
        "",
        f"Written {time.strftime('%Y-%m-%d %H:%M:%S')} by `make bench` "
        "(each figure a ratio against a baseline measured in the same run; see each script's "
        "docstring).",
        "",
        "| benchmark | goal | measured | verdict |",
        "| --- | --- | --- | --- |",
    ]
    for name, doc in docs:
        for g in doc.get("goals", []):
            verdict = "PASS" if g.get("passed") else "**FAIL**"
            lines.append(
                f"| {name} | {_cell(g.get('name'))} | {_cell(g.get('measured'))} | {verdict} |"
            )
    for name, doc in docs:
        lines += ["", f"## {name}", ""]
        versions = doc.get("versions") or doc.get("package_versions")
        if isinstance(versions, dict):
            lines.append(", ".join(f"{k} {v}" for k, v in versions.items()))
            lines.append("")
        text = results / f"{name}.txt"
        if text.exists():
            lines += ["```", text.read_text().rstrip(), "```"]
        else:
            lines.append(f"(no printed tables: run `python benchmarks/{name}.py` for them)")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    args = p.parse_args()
    out = args.results / "README.md"
    out.write_text(summarise(args.results))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
