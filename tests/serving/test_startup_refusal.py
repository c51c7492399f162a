"""The service refuses to serve beyond this machine with public development secrets (issue 12,
item 8): the salts and API keys have defaults anyone can read in the source, fine on 127.0.0.1
and not on an address others can reach."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nextbest.cli import app
from nextbest.settings import Settings, development_secrets_error
from serving import run

OWN = {  # values of one's own for every development default
    "identity_salt": "s3cret-identity",
    "assignment_salt": "s3cret-assignment",
    "channel_keys": ["web-key-9f2"],
    "admin_keys": ["ops-key-77a"],
    "console_keys": ["ann:agent:desk-key-41"],
    "console_secret": "s3cret-console",
}
DEV = {
    "identity_salt": ("NEXTBEST_IDENTITY_SALT", "nextbest-dev-salt"),
    "assignment_salt": ("NEXTBEST_ASSIGNMENT_SALT", "nextbest-assignment"),
    "channel_keys": ("NEXTBEST_CHANNEL_KEYS", "channel-dev-key"),
    "admin_keys": ("NEXTBEST_ADMIN_KEYS", "admin-dev-key"),
    "console_keys": ("NEXTBEST_CONSOLE_KEYS", "agent:agent:agent-dev-key"),
    "console_secret": ("NEXTBEST_CONSOLE_SECRET", "nextbest-console-dev-secret"),
}
LOOPBACK = ["127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"]
ELSEWHERE = ["0.0.0.0", "::", "10.1.2.3", "192.0.2.1", "nextbest.example.com"]


def refusal(name: str, host: str) -> str:
    variable, value = DEV[name]
    return (
        f"{variable}: the public development value cannot serve on non-loopback host {host!r} "
        f"(got {value!r})"
    )


@pytest.mark.parametrize("host", LOOPBACK + ELSEWHERE)
@pytest.mark.parametrize("name", list(DEV))
def test_a_development_secret_refuses_a_non_loopback_host(name: str, host: str) -> None:
    dev_value = Settings.model_fields[name].default
    settings = Settings(**{**OWN, name: dev_value})
    expected = None if host in LOOPBACK else f"settings: {refusal(name, host)}"
    assert development_secrets_error(settings, host) == expected


@pytest.mark.parametrize("host", LOOPBACK + ELSEWHERE)
def test_own_secrets_serve_anywhere(host: str) -> None:
    assert development_secrets_error(Settings(**OWN), host) is None


def test_a_development_key_among_real_ones_is_refused_too() -> None:
    settings = Settings(**{**OWN, "admin_keys": ["ops-key-77a", "admin-dev-key"]})
    assert development_secrets_error(settings, "0.0.0.0") == (
        f"settings: {refusal('admin_keys', '0.0.0.0')}"
    )


ALL_DEV = "error: settings: " + "; ".join(refusal(name, "0.0.0.0") for name in DEV)


def test_nextbest_serve_refuses_before_starting(
    private_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every development default at once, one line naming each, exit 2, nothing started."""
    monkeypatch.setenv("NEXTBEST_HOST", "0.0.0.0")
    result = CliRunner().invoke(app, ["serve"])
    assert (result.exit_code, result.stderr.strip()) == (2, ALL_DEV)


@pytest.mark.parametrize(
    ("argv", "environ", "host"),
    [
        (["/venv/bin/bentoml", "serve", "svc:S", "--host", "10.0.0.1"], {}, "10.0.0.1"),
        (["/venv/bin/bentoml", "serve", "svc:S", "--host=::1"], {}, "::1"),
        (["/venv/bin/bentoml", "serve-http", "svc:S"], {"BENTOML_HOST": "127.0.0.1"}, "127.0.0.1"),
        (["/venv/bin/bentoml", "serve", "svc:S", "--port", "3000"], {}, "0.0.0.0"),  # its default
        (["/x/bentoml/__main__.py", "serve", "svc:S", "--host", "localhost"], {}, "localhost"),
        (["/venv/bin/bentoml", "build", "-f", "pyproject.toml"], {}, None),
        (["/x/_bentoml_impl/worker/service.py", "svc:S", "--fd", "3"], {}, None),
        (["/venv/bin/pytest", "tests/serving"], {"BENTOML_HOST": "0.0.0.0"}, None),
    ],
)
def test_the_host_a_bentoml_serve_binds(argv: list[str], environ: dict, host: str | None) -> None:
    """Only a ``bentoml serve`` process serves; it binds --host, else BENTOML_HOST, else
    BentoML's default, every interface."""
    assert run.bound_host(argv, environ) == host


@pytest.mark.slow
def test_bentoml_serve_by_hand_refuses_with_the_same_line(tmp_path: Path) -> None:
    """A Bento or the service run by ``bentoml serve`` outside ``nextbest serve`` refuses too.
    192.0.2.1 (TEST-NET-1) is no address of this machine: nothing could listen on it even if
    the refusal were missing (the bind would fail, without this line)."""
    settings = Settings(home=tmp_path)
    cmd = run.server_cmd("serving.service:Nextbest", run.free_port(), "192.0.2.1")
    done = subprocess.run(
        cmd,
        env=run.server_env(settings),
        cwd=run.PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    expected = ALL_DEV.replace("'0.0.0.0'", "'192.0.2.1'")
    assert done.returncode == 2, done.stderr[-2000:]
    assert expected in done.stderr.splitlines(), done.stderr[-2000:]
