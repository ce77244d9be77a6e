"""Metadata lives in setup.cfg; this file only declares the optional C speed-ups.

Each extension has a pure-Python twin that gives byte-identical output (tested), so a
machine without a C compiler or Python headers still installs a working pgsource, only
slower: a failed build is reported and skipped, never fatal.
"""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

EXTENSIONS: list[Extension] = [
    # libxxhash.so.0 is on every Debian with apt (libapt-pkg depends on it); no -dev headers needed
    Extension("pgsource.encode._frames", ["pgsource/encode/_frames.c"], libraries=[":libxxhash.so.0"]),
    # twin: pgsource/decode/rowjson.py (the CDC hot path: pgoutput TupleData -> payload bytes)
    Extension("pgsource.decode._rowjson", ["pgsource/decode/_rowjson.c"], depends=["pgsource/decode/_jsonvalue.h"]),
    # twin: pgsource/rows/copyjson.py (polling: a batch's COPY text -> Iggy frames in one pass)
    Extension("pgsource.rows._copyjson", ["pgsource/rows/_copyjson.c"], depends=["pgsource/decode/_jsonvalue.h"],
              libraries=[":libxxhash.so.0"]),
]


class OptionalBuildExt(build_ext):
    """Build what compiles; warn about the rest (pgsource then uses the Python twin)."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - no compiler at all
            self.warn(f"pgsource: C speed-ups not built ({exc}); using the pure-Python code")

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001 - missing header or library
            self.warn(f"pgsource: {ext.name} not built ({exc}); using the pure-Python code")


setup(ext_modules=EXTENSIONS, cmdclass={"build_ext": OptionalBuildExt})
