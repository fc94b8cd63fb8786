"""``pico-compare`` from a pico checkout: the same tool (see ``pico/compare.py``), with
``--record`` appending to ``bench/RESULTS.md`` unless ``--results`` says otherwise.

Example:
    python bench/compare.py --methods pico proden supervised --q 0.3 0.7 --seeds 0 1 2 \\
        --data digits path/to/italian.mat --parallel 2 --record
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/ is not a package. Python puts a script's folder first on sys.path, where
# bench/baselines.py would shadow the `baselines` package: the folder is taken off the
# path (every entry of it) right after the shared helpers (bench/common.py) are imported.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BENCH, RESULTS

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH]

from pico.compare import main  # noqa: E402  (after bench/ left sys.path)

if __name__ == "__main__":
    main(prog="python bench/compare.py", default_results=RESULTS)
