"""Token files and authentication (the authorisation matrix is in test_service_matrix.py)."""

from __future__ import annotations

import pytest

from xpod.hal.errors import XpodError
from xpod.scheduler.grpc.auth import Authenticator, Unauthenticated, load_tokens, token_sha256
from xpod.scheduler.service.auth import ALLOWED, Call, Role

GOOD = """\
tokens:
  - name: alice
    token: alice-secret-token-0001
    role: submitter
    queues: [research]
  - name: ops
    token_sha256: "{ops_hash}"
    role: admin
  - {{name: agents, role: agent, token: agent-secret-token-0001, nodes: "*"}}
"""


def write(tmp_path, text: str) -> str:
    p = tmp_path / "tokens.yaml"
    p.write_text(text)
    return str(p)


def test_good_file_and_bearer_tokens(tmp_path):
    path = write(tmp_path, GOOD.format(ops_hash=token_sha256("ops-secret-token-00001")))
    auth = Authenticator.from_file(path)
    alice = auth.authenticate("Bearer alice-secret-token-0001")
    assert alice.role is Role.SUBMITTER and alice.queues == {"research"}
    assert auth.authenticate("bearer ops-secret-token-00001").role is Role.ADMIN
    assert auth.authenticate("Bearer agent-secret-token-0001").name == "agents"
    for bad in (None, "", "Bearer", "Basic abc", "Bearer wrong-token-value-xxxx"):
        with pytest.raises(Unauthenticated):
            auth.authenticate(bad)


def test_open_server_is_admin_for_everyone():
    auth = Authenticator.open_server()
    assert auth.open and auth.authenticate(None).role is Role.ADMIN


def test_matrix_shape():
    assert ALLOWED[Role.ADMIN] == frozenset(Call)
    assert Call.SUBMIT_JOB not in ALLOWED[Role.AGENT]
    assert Call.REGISTER_NODES not in ALLOWED[Role.SUBMITTER]


@pytest.mark.parametrize(
    "text, message",
    [
        ("tokens: [", ":1: not valid YAML"),
        ("- a\n- b\n", ":1: a token file is a mapping"),
        ("tokens: []\n", ":1: 'tokens' must be a non-empty list"),
        (
            "tokens:\n  - {name: a, role: boss, token: aaaaaaaaaaaaaaaaaaaa}\n",
            ":2: role 'boss' is not one of admin, agent, submitter",
        ),
        (
            "tokens:\n  - {name: a, role: admin, token: short}\n",
            ":2: token 'a': a token must be at least 16 characters",
        ),
        (
            "tokens:\n  - name: a\n    role: submitter\n    token: aaaaaaaaaaaaaaaaaaaa\n",
            ":2: submitter 'a' needs a non-empty 'queues' list",
        ),
        ("tokens:\n  - name: a\n    role: admin\n    tokne: aaaaaaaaaaaaaaaaaaaa\n", ":4: unknown key 'tokne'"),
        ("tokens:\n  - {name: a, role: admin}\n", "give exactly one of 'token' or 'token_sha256'"),
        ("tokens:\n  - {name: a, role: admin, token_sha256: xyz}\n", "token_sha256 must be 64 hex digits"),
        (
            "tokens:\n  - {name: a, role: admin, token: aaaaaaaaaaaaaaaaaaaa}\n  - {name: a, role: agent, token: bbbbbbbbbbbbbbbbbbbb}\n",
            ":3: duplicate name 'a'",
        ),
        (
            'tokens:\n  - {name: a, role: admin, token: aaaaaaaaaaaaaaaaaaaa}\n  - {name: b, role: agent, token: aaaaaaaaaaaaaaaaaaaa, nodes: "*"}\n',
            "has the same token as 'a'",
        ),
        (
            "tokens:\n  - {name: a, role: agent, token: aaaaaaaaaaaaaaaaaaaa, queues: [x]}\n",
            "'queues' applies to submitters only",
        ),
        ("tokenz: []\n", ":1: unknown key 'tokenz'"),
    ],
)
def test_bad_token_files_name_file_and_line(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(XpodError) as err:
        load_tokens(path)
    assert str(err.value).startswith(path)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(XpodError, match="cannot read the token file"):
        load_tokens(str(tmp_path / "nope.yaml"))
