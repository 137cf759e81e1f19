"""``python -m bench [NAME ...]``: runs every benchmark module in bench/ that has a ``main()`` (or only the
named ones, in the order given, e.g. ``python -m bench analysis compare_runs``), each under a header."""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def benchmarks() -> list[str]:
    """Names of the modules in bench/ (not this one), sorted."""
    return sorted(
        info.name for info in pkgutil.iter_modules([str(HERE)]) if not info.name.startswith("_")
    )


def main(argv: list[str] | None = None) -> int:
    repo = str(HERE.parent)
    if repo not in sys.path:
        sys.path.insert(0, repo)
    names = benchmarks()
    # Options (words starting with '-') go to the benchmarks that take them, e.g. `real-runs --write`.
    wanted = [name.removeprefix("bench.").removesuffix(".py").replace("-", "_") for name in
              (sys.argv[1:] if argv is None else argv) if not name.startswith("-")]
    unknown = [name for name in wanted if name not in names]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; the benchmarks are: {', '.join(names)}",
              file=sys.stderr)
        return 2
    if wanted:
        names = wanted
    failed = 0
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        run = getattr(module, "main", None)
        if not callable(run):
            continue
        title = (module.__doc__ or name).strip().splitlines()[0]
        print("=" * 100)
        print(f"bench.{name}: {title}")
        print("=" * 100, flush=True)
        started = time.perf_counter()
        try:
            run()
        except Exception as exc:  # report and go on to the next benchmark
            failed += 1
            print(f"bench.{name} raised {type(exc).__name__}: {exc}", flush=True)
        print(f"[bench.{name}: {time.perf_counter() - started:.1f} s]\n", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
