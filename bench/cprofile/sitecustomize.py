"""``bench.run --profile DIR``: every pgsource process profiles its main thread with cProfile.

Put on PYTHONPATH only by the benchmark; each process writes ``DIR/<argv0>-<pid>.prof`` at exit.
"""

import os

_DIR = os.environ.get("BENCH_CPROFILE_DIR")
if _DIR:
    import atexit
    import cProfile
    import sys

    _profile = cProfile.Profile()
    _profile.enable()

    def _dump() -> None:
        _profile.disable()
        name = os.path.basename(sys.argv[0] or "python").replace(".py", "")
        _profile.dump_stats(os.path.join(_DIR, f"{name}-{os.getpid()}.prof"))

    atexit.register(_dump)
