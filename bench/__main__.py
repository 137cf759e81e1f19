"""``python -m bench``: runs every benchmark module in bench/ that has a ``main()``, each under a header."""

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


def main() -> int:
    repo = str(HERE.parent)
    if repo not in sys.path:
        sys.path.insert(0, repo)
    names = benchmarks()
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
