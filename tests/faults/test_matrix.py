"""The fault matrix (issue 12): every scenario of ``tests/faults/scenarios.py`` in polling and in CDC
over both transports, end to end; one test per scenario and mode.

The runs do not share a database (nor a stand-in, a slot or a state.dir), so they run side by side
on a small pool: the first test starts every selected run, each test waits for its own and fails
with what its run found. Under pytest-xdist the suite distributes by file (``--dist loadfile``,
setup.cfg), so one worker runs this whole module and starts the pool once. The table (``tests/faults/RESULTS.md``) is printed at the end of the
session and rewritten there when the whole matrix ran and passed.
"""

from __future__ import annotations

import os
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.faults.harness import Result, Run, table_text
from tests.faults.scenarios import SCENARIOS

PARALLEL = int(os.environ.get("PGSOURCE_FAULTS_PARALLEL", "6"))
MATRIX_TIMEOUT = 900  # seconds for the whole matrix to end (it takes under 8 minutes): a hang fails, not waits
CASES = [(scenario, mode) for scenario in SCENARIOS for mode in scenario.modes]
RESULTS_FILE = Path(__file__).with_name("RESULTS.md")
BEGIN, END = "<!-- matrix:begin -->", "<!-- matrix:end -->"
REPORT: dict = {}  # what the session summary prints (tests/faults/conftest.py)


def _case_id(case) -> str:
    scenario, mode = case
    return f"{scenario.name.split()[0]}-{scenario.inject.__name__}-{mode}"


def run_case(case, cluster, root: Path) -> Result:
    scenario, mode = case
    run = None
    try:
        run = Run(scenario.name, mode, root, cluster, own_cluster=scenario.own_cluster)
        try:
            scenario.inject(run)
        except AssertionError as exc:
            run.problem(f"{exc}\n{run.log_tail()}")
        result = run.finish()
    except Exception:  # noqa: BLE001 - the test reports it
        result = run.result if run is not None else Result(scenario.name, mode)
        result.problems.append(traceback.format_exc())
    finally:
        if run is not None:
            run.close()
    return result


@pytest.fixture(scope="module")
def matrix(request, pg_cluster, tmp_path_factory):
    """Every selected case started on the pool, heaviest first; the futures by case."""
    selected = [item.callspec.params["case"] for item in request.session.items
                if item.module is request.module and hasattr(item, "callspec")]
    root = tmp_path_factory.mktemp("faults")
    started, load_before = time.monotonic(), os.getloadavg()
    pool = ThreadPoolExecutor(PARALLEL, thread_name_prefix="fault-run")
    # heaviest first (CDC before polling within a weight): a long run started last is the whole tail
    order = sorted(selected, key=lambda case: (-case[0].weight, case[1] == "polling"))
    futures = {case: pool.submit(run_case, case, pg_cluster, root) for case in order}
    REPORT["deadline"] = time.monotonic() + MATRIX_TIMEOUT
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)  # runs not started yet (a session stopped by -x)
    results = [futures[case].result() for case in selected if not futures[case].cancelled()]  # test order
    elapsed = time.monotonic() - started
    session = time.monotonic() - REPORT.get("session_started", started)
    REPORT["table"] = table_text(results)
    slowest = sorted(results, key=lambda r: -r.seconds)[:5]
    REPORT["summary"] = (f"{time.strftime('%Y-%m-%d %H:%M')}: {len(results)} runs in {elapsed:.0f}s with {PARALLEL}"
                         f" side by side ({session:.0f}s wall since the pytest session started); load average"
                         f" {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after; slowest runs: "
                         + ", ".join(f"{r.scenario.split()[0]} {r.mode} {r.seconds:.0f}s" for r in slowest))
    if len(results) == len(CASES) and not any(r.problems for r in results) and RESULTS_FILE.exists():
        text = RESULTS_FILE.read_text()
        if BEGIN in text and END in text:
            head, rest = text.split(BEGIN, 1)
            tail = rest.split(END, 1)[1]
            RESULTS_FILE.write_text(f"{head}{BEGIN}\n{REPORT['table']}\n\n{REPORT['summary']}\n{END}{tail}")


@pytest.mark.timeout(MATRIX_TIMEOUT + 60)  # a test waits for its run, which may start last
@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_fault(matrix, case):
    result = matrix[case].result(timeout=max(1.0, REPORT["deadline"] - time.monotonic()))
    assert not result.problems, f"{result.scenario} [{result.mode}]:\n" + "\n".join(result.problems)
