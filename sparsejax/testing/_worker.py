"""One process of a `sparsejax.testing.run_processes` group (run as ``python -m``)."""

from __future__ import annotations

import importlib
import importlib.util
import os
import pathlib
import pickle
import sys
import traceback

import jax

from sparsejax.testing.multiprocess import _to_host


def main(spec: str, out: str, coordinator: str, num_processes: str, process_id: str) -> None:
    """Join the group, import ``fn`` by name, run it and write its pickled result to ``out``."""
    module, qualname, file, args, kwargs = pickle.loads(pathlib.Path(spec).read_bytes())
    jax.distributed.initialize(coordinator_address=coordinator,
                               num_processes=int(num_processes), process_id=int(process_id))
    try:
        mod = importlib.import_module(module)
    except ImportError:
        if file is None:
            raise
        loader = importlib.util.spec_from_file_location(module, file)
        mod = importlib.util.module_from_spec(loader)
        sys.modules[module] = mod
        loader.loader.exec_module(mod)
    fn = mod
    for part in qualname.split("."):
        fn = getattr(fn, part)
    try:
        result = _to_host(fn(*args, **kwargs))
    except BaseException:  # exit now: a clean shutdown would wait for the others at a barrier
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    pathlib.Path(out).write_bytes(pickle.dumps(result))
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:6])
