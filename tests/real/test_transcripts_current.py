"""The committed golden transcripts still describe this server: record them again and compare.

``tests/standin/test_transcripts.py`` holds the stand-in to the committed transcripts in CI;
this holds the transcripts to the real server, so a server that answers differently (a
newer build) is noticed here rather than trusted silently."""

from __future__ import annotations

import os

import pytest

from pgsource_testkit.iggy import transcript as tr
from tests.real.conftest import MODE
from tests.real.record_transcripts import DEFAULT_OUT, TRANSCRIPTS, record

pytestmark = pytest.mark.timeout(900)


@pytest.mark.parametrize("name", sorted(TRANSCRIPTS))
def test_the_server_answers_as_recorded(name, tmp_path):
    if MODE != "binary":
        pytest.skip("records on fresh server instances: needs PGSOURCE_TEST_IGGY_SERVER=/path/to/iggy-server")
    record(os.environ["PGSOURCE_TEST_IGGY_SERVER"], tmp_path, [name])
    committed = tr.Transcript.load(DEFAULT_OUT / f"{name}.json")
    fresh = tr.Transcript.load(tmp_path / f"{name}.json")
    want = [[(e.what, e.outcome, e.reply) for e in c] for c in committed.connections]
    got = [[(e.what, e.outcome, e.reply) for e in c] for c in fresh.connections]
    assert got == want
