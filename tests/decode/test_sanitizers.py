"""The C extensions under AddressSanitizer and UndefinedBehaviorSanitizer, fed fuzz inputs.

The three extensions are compiled again with ``-fsanitize=address,undefined`` into a temporary
directory; a child interpreter (the sanitizer runtime preloaded, since python itself is
not instrumented) loads them in place of the normal builds and runs deterministic fuzz
inputs: random, truncated and mangled TupleData through ``_rowjson.Plan`` (every column
kind, converters that fail or return odd things), random ids, payloads and headers through
``_frames.encode_frames``, damaged batches through ``_frames.index_frames``, and random plans
and COPY text (escapes, NULLs, invalid UTF-8, stray tabs, rows cut by any chunking) through
``_copyjson.CopyPlan`` (``tests/decode/test_copyjson.py``'s generator). Any
out-of-bounds access, use after free, signed overflow or misaligned load aborts the child
with the sanitizer's report. A deliberately broken extension proves the harness sees one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

from tests.support import REPO

FUZZ_SECONDS = 8  # per extension family; the whole test (3 families) stays within ~45 s on a loaded machine


def _runtime() -> str:
    path = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True, check=True).stdout.strip()
    assert os.path.isabs(path) and os.path.exists(path), f"gcc has no libasan runtime ({path!r}): apt-get install libasan8"
    return path


def _compile(source: Path, out: Path, *libraries: str) -> Path:
    include = sysconfig.get_paths()["include"]
    command = ["gcc", "-shared", "-fPIC", "-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
               "-fno-sanitize-recover=undefined", f"-I{include}", str(source), "-o", str(out), *libraries]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return out


def _run(script: str, modules: dict[str, Path], timeout: float = 120) -> subprocess.CompletedProcess:
    loader = "".join(
        f"spec = importlib.util.spec_from_file_location({name!r}, {str(path)!r})\n"
        f"module = importlib.util.module_from_spec(spec); sys.modules[{name!r}] = module; spec.loader.exec_module(module)\n"
        for name, path in modules.items()
    )
    code = "import importlib.util, sys\n" + loader + textwrap.dedent(script)
    env = {"PYTHONPATH": str(REPO), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LD_PRELOAD": _runtime(),
           "ASAN_OPTIONS": "detect_leaks=0:halt_on_error=1:abort_on_error=0:exitcode=86",
           "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1:exitcode=87", "PYTHONHASHSEED": "0",
           "PYTHONMALLOC": "malloc"}  # every PyMem/bytes buffer from malloc, so ASan sees its bounds too
    return subprocess.run([sys.executable, "-c", code], cwd=str(REPO), env=env, capture_output=True, text=True,
                          timeout=timeout)


_BROKEN = r"""
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>
static PyObject *overflow(PyObject *self, PyObject *arg) {
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    char *p = PyMem_RawMalloc(8);
    memset(p, 1, (size_t)n);  /* n > 8: a heap buffer overflow */
    int sum = p[0];
    PyMem_RawFree(p);
    return PyLong_FromLong(sum);
}
static PyMethodDef methods[] = {{"overflow", overflow, METH_O, NULL}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "broken", NULL, -1, methods};
PyMODINIT_FUNC PyInit_broken(void) { return PyModule_Create(&module); }
"""

_ROWJSON_FUZZ = r"""
import random, struct, time
from pgsource.decode import rowjson
from pgsource.decode._rowjson import Plan
assert rowjson.Plan is Plan and sys.modules["pgsource.decode._rowjson"].__file__.endswith("_sanitized.so")
from tests.decode.test_rowjson import FUZZ_CATALOG, _PLAUSIBLE, _INVALID_UTF8, tuple_data

rng = random.Random(20261201)
oids = sorted(FUZZ_CATALOG)
def fail(text):
    raise ValueError(text)
odd = [fail, lambda text: 5, lambda text: "\ud800", lambda text: text * 3, lambda text: ""]
def value(oid):
    pick = rng.random()
    if pick < 0.4:
        return rng.choice(_PLAUSIBLE[oid]).encode()
    if pick < 0.5:
        return None
    if pick < 0.7:
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 30)))
    if pick < 0.8:
        return rng.choice(_INVALID_UTF8) + b"x" * rng.randint(0, 9)
    return "".join(chr(rng.choice([0x22, 0x5c, 0, 1, 0x1f, 0x7f, 0xe9, 0x1f600, 0x2028, 0x61])) for _ in range(rng.randint(0, 40))).encode()
deadline, count = time.monotonic() + SECONDS, 0
while time.monotonic() < deadline:
    layout = [rng.choice(oids) for _ in range(rng.randint(0, 7))]
    plan = rowjson.compile_plan([(f"c{i}", oid) for i, oid in enumerate(layout)], FUZZ_CATALOG)
    kinds = [rowjson._kind(FUZZ_CATALOG[oid]) for oid in layout]
    raw = Plan([(kind, b',"k":', rng.choice(odd)) for kind in kinds])  # converters that fail or return junk
    for _ in range(20):
        data = bytearray(tuple_data([value(oid) for oid in layout]))
        mangle = rng.randrange(5)
        end = len(data)
        if mangle == 1:
            end = rng.randint(0, end)
        elif mangle == 2 and len(data) > 6:
            at = rng.randrange(2, len(data) - 4)
            data[at:at + 4] = struct.pack("!I", rng.choice([0, 1, 2**31, 2**32 - 1, rng.getrandbits(32)]))
        elif mangle == 3 and data:
            data[rng.randrange(len(data))] = rng.getrandbits(8)
        elif mangle == 4:
            data[0:2] = struct.pack("!H", rng.getrandbits(16))
        pad = rng.randint(0, 9)
        buffer = bytes(pad) + bytes(data) + b"tail"
        for function in (plan, raw):
            result = function(buffer, None, pad, pad + end, b"<" * rng.randint(0, 3000), b">")
            assert result is None or isinstance(result, bytes)
            view = memoryview(bytearray(buffer))
            function(view, None, pad, pad + end, b"", b"")
        count += 1
print("rowjson", count)
"""

_FRAMES_FUZZ = r"""
import random, struct, time
from pgsource.encode import _frames, frames
assert frames.compiled is _frames and _frames.__file__.endswith("_sanitized.so")

rng = random.Random(7)
deadline, count = time.monotonic() + SECONDS, 0
while time.monotonic() < deadline:
    n = rng.randint(1, 20)
    ids = [rng.getrandbits(128) for _ in range(n)]
    payloads = [bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 300))) if rng.random() < 0.5
                else "é😀" * rng.randint(1, 100) for _ in range(n)]
    shared = {"table": "t" * rng.randint(1, 255), "operation": "INSERT", "lsn": "0/" + "F" * rng.randint(1, 8)}
    headers = [rng.choice([None, shared, {}, {"k": "v" * rng.randint(1, 255)}]) for _ in range(n)] if rng.random() < 0.7 else None
    if rng.random() < 0.1:  # invalid input must raise, not corrupt memory
        ids[rng.randrange(n)] = rng.choice([-1, 2**128, "x"])
    try:
        body, sums = frames.encode_frames(ids, payloads, headers)
    except (TypeError, ValueError, OverflowError):
        continue
    batch = bytearray(256) + body
    for _ in range(10):
        damaged = bytearray(batch)
        how = rng.randrange(4)
        if how == 0 and len(damaged) > 257:
            del damaged[rng.randint(257, len(damaged) - 1):]
        elif how == 1:
            damaged[rng.randrange(len(damaged))] = rng.getrandbits(8)
        elif how == 2 and len(damaged) > 270:
            at = rng.randrange(256, len(damaged) - 8)
            damaged[at:at + 4] = struct.pack("<I", rng.choice([0, 2**32 - 1, rng.getrandbits(32)]))
        result = _frames.index_frames(bytes(damaged))
        assert isinstance(result, tuple)
        _frames.xxh3_64(bytes(damaged))
        count += 1
print("frames", count)
"""

_COPYJSON_FUZZ = r"""
import random, time
from pgsource.rows import _copyjson, copyjson
assert copyjson._copyjson is _copyjson and _copyjson.__file__.endswith("_sanitized.so")
from tests.decode.test_copyjson import feed, random_copy, random_plan

rng = random.Random(20261202)
deadline, count = time.monotonic() + SECONDS, 0
while time.monotonic() < deadline:
    plan, makers, fields = random_plan(rng, True)
    exclude = _copyjson.sort_ids(b"".join(rng.getrandbits(128).to_bytes(16, "big") for _ in range(rng.randint(0, 3))))
    sink = plan.batch(b"<" * rng.randint(0, 3000), b">", rng.randint(0, 9), exclude or None, rng.choice([0, 0, 1, 2, 5]))
    result = feed(sink, random_copy(rng, makers, fields, rng.randint(0, 12)), rng)
    assert isinstance(result, (tuple, list)) and result
    count += 1
print("copyjson", count)
"""


@pytest.mark.timeout(180)
def test_c_extensions_under_asan_and_ubsan(tmp_path):
    rowjson = _compile(REPO / "pgsource/decode/_rowjson.c", tmp_path / "rowjson_sanitized.so")
    frames = _compile(REPO / "pgsource/encode/_frames.c", tmp_path / "frames_sanitized.so", "-l:libxxhash.so.0")
    copyjson = _compile(REPO / "pgsource/rows/_copyjson.c", tmp_path / "copyjson_sanitized.so", "-l:libxxhash.so.0")
    modules = {"pgsource.decode._rowjson": rowjson, "pgsource.encode._frames": frames,
               "pgsource.rows._copyjson": copyjson}
    for name, script in (("rowjson", _ROWJSON_FUZZ), ("frames", _FRAMES_FUZZ), ("copyjson", _COPYJSON_FUZZ)):
        done = _run(f"SECONDS = {FUZZ_SECONDS}\n" + textwrap.dedent(script), modules)
        report = done.stderr[-6000:]
        assert "AddressSanitizer" not in done.stderr and "runtime error" not in done.stderr, report
        assert done.returncode == 0, report
        assert int(done.stdout.split(name)[1]) > 1000, done.stdout  # it did run fuzz inputs


def test_the_harness_sees_a_memory_error(tmp_path):
    """The same compile and preload catch a heap overflow: a clean run above means something."""
    source = tmp_path / "broken.c"
    source.write_text(_BROKEN)
    broken = _compile(source, tmp_path / "broken.so")
    assert _run("print(sys.modules['broken'].overflow(4))", {"broken": broken}).returncode == 0
    done = _run("print(sys.modules['broken'].overflow(64))", {"broken": broken})
    assert done.returncode == 86 and "heap-buffer-overflow" in done.stderr, done.stderr[-3000:]
