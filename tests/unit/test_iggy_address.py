"""``iggy.address``: one grammar, every form a user may write, right and wrong (issue 23, bug 2).

A URL where host:port is expected made ``check`` print a ValueError traceback (exit 1) and
``run`` six tracebacks (exit 6, after 35 s); now each wrong form is a configuration error:
exit 2, one line naming the key and the expected form, from ``check`` and ``run`` alike.
"""

from __future__ import annotations

import time

import pytest
import yaml

from pgsource.config import parse_config
from pgsource.config.address import Address, parse_address
from pgsource.errors import ConfigError
from tests.support import run_cli
from tests.unit.test_config_errors import run_cli_many

SOURCE = {"connection_string": "postgresql://u@127.0.0.1:1/db", "mode": "polling", "tables": ["users"]}

RIGHT = [
    ("127.0.0.1:8090", Address("127.0.0.1", 8090)),
    ("localhost:8090", Address("localhost", 8090)),
    ("iggy.example.com:8090", Address("iggy.example.com", 8090)),
    ("iggy-0.iggy.svc.cluster.local:8090", Address("iggy-0.iggy.svc.cluster.local", 8090)),
    ("[::1]:8090", Address("::1", 8090)),
    ("[fd00::2:1]:9000", Address("fd00::2:1", 9000)),
]
WRONG = [  # (what the user wrote, what the one line must say)
    ("http://127.0.0.1:8090", "is a URL; write host:port"),
    ("tcp://iggy.example.com:8090", "is a URL; write host:port"),
    ("127.0.0.1", "is not host:port: the port is missing (e.g. 127.0.0.1:8090)"),
    ("localhost", "is not host:port: the port is missing"),
    ("[::1]", "is not host:port: the port is missing (e.g. [::1]:8090)"),
    ("::1", "looks like a bare IPv6 address; put it in brackets with the port: [v6-address]:port"),
    ("::1:8090", "looks like a bare IPv6 address"),
    ("fd00::2:8090", "looks like a bare IPv6 address"),
    ("[iggy]:8090", "[...] holds an IPv6 address"),
    ("localhost:0", "the port must be a number from 1 to 65535"),
    ("localhost:70000", "the port must be a number from 1 to 65535"),
    ("localhost:http", "the port must be a number from 1 to 65535"),
    ("iggy host:8090", "is not a host name or IPv4 address"),
    ("300.1.2.3:8090", "is not a host name or IPv4 address"),
    (":8090", "is not a host name or IPv4 address"),
]


@pytest.mark.parametrize(("text", "expected"), RIGHT)
def test_the_forms_iggy_accepts_are_read(text, expected):
    assert parse_address(text) == expected
    config = parse_config(yaml.safe_dump({"source": SOURCE, "iggy": {"address": text}}))
    assert config.iggy.server == expected
    assert str(config.iggy.server) == text


@pytest.mark.parametrize(("text", "says"), WRONG)
def test_every_wrong_form_is_one_line_naming_the_key_and_the_form(text, says):
    with pytest.raises(ConfigError) as raised:
        parse_config(yaml.safe_dump({"source": SOURCE, "iggy": {"address": text}}))
    lines = str(raised.value).splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("iggy.address: ") and says in lines[0], lines[0]


def test_the_tls_domain_defaults_to_the_host():
    def domain(address: str, **tls) -> str:
        return parse_config(yaml.safe_dump({"source": SOURCE, "iggy": {"address": address, "tls": tls}})).iggy.tls_domain

    assert domain("iggy.example.com:8090") == "iggy.example.com"
    assert domain("[::1]:8090") == "::1"
    assert domain("10.0.0.5:8090", domain="iggy.internal") == "iggy.internal"


def test_check_and_run_refuse_a_url_with_exit_2_and_no_traceback(tmp_path):
    """Through the real CLI: every wrong form, ``check`` and ``run``; and one real ``run`` process,
    which stopped with exit 6 after 35 s before."""
    paths = []
    for index, (text, _) in enumerate(WRONG):
        path = tmp_path / f"c{index}.yaml"
        path.write_text(yaml.safe_dump({"source": SOURCE, "iggy": {"address": text}}))
        paths.append(path)
    results = run_cli_many([[command, "--config", str(path)] for path in paths for command in ("check", "run")])
    for index, (text, says) in enumerate(WRONG):
        for offset, command in enumerate(("check", "run")):
            code, stderr = results[2 * index + offset]
            lines = [line for line in stderr.splitlines()[1:] if line.strip()]
            assert code == 2 and "Traceback" not in stderr and len(lines) == 1, f"{command} {text}: {code} {stderr}"
            assert lines[0].strip().startswith("iggy.address: ") and says in lines[0], lines
    started = time.monotonic()
    result = run_cli("run", "--config", str(paths[0]), timeout=30)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "iggy.address: 'http://127.0.0.1:8090' is a URL; write host:port" in result.stderr
    assert time.monotonic() - started < 10
