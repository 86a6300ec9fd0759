"""Execute a teaching notebook in place, in the full or the reduced mode of its experiments.

    python -m minilora.run_notebook notebooks/03_rank_one_sufficiency.ipynb --mode full

Sets MINILORA_MODE for the kernel (see ``minilora.experiments``), runs every cell in a fresh kernel from the
notebook's folder, and writes the executed notebook back atomically, with the mode, the wall time and the load
average recorded in its metadata ("minilora"). Needs the ``notebooks`` or ``dev`` extra (nbclient, ipykernel).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path


def run_notebook(path, mode: str, timeout: int = 3600) -> dict:
    """Execute the notebook at ``path`` in a fresh kernel with MINILORA_MODE=mode and write it back atomically with
    its outputs and a metadata record; returns the record (mode, wall seconds, load average after)."""
    import nbclient
    import nbformat

    from .checkpoint import atomic_write_bytes
    from .experiments import MODES

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    previous = os.environ.get("MINILORA_MODE")
    os.environ["MINILORA_MODE"] = mode  # the kernel inherits the environment
    t0 = time.time()
    try:
        nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent)}}).execute()
    except nbclient.exceptions.CellExecutionError:
        import tempfile

        failed = Path(tempfile.mkdtemp()) / path.name  # the cells run so far, with their outputs; the page is kept
        failed.write_text(nbformat.writes(nb), encoding="utf-8")
        print(f"a cell failed; the partly executed notebook is in {failed}; {path} is unchanged", flush=True)
        raise
    finally:
        if previous is None:
            os.environ.pop("MINILORA_MODE", None)
        else:
            os.environ["MINILORA_MODE"] = previous
    record = {"mode": mode, "wall_seconds": round(time.time() - t0, 1),
              "load_average_after": [round(x, 2) for x in os.getloadavg()]}
    nb.metadata["minilora"] = record
    atomic_write_bytes(path, nbformat.writes(nb).encode("utf-8"))
    return record


def main(argv=None) -> int:
    """python -m minilora.run_notebook PATH... [--mode full|reduced]: execute notebooks in place."""
    p = argparse.ArgumentParser(prog="python -m minilora.run_notebook", description=__doc__.splitlines()[0])
    p.add_argument("paths", nargs="+")
    p.add_argument("--mode", choices=("full", "reduced"), default="full")
    args = p.parse_args(argv)
    for path in args.paths:
        print(path, run_notebook(path, args.mode), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
