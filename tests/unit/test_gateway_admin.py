"""gateway.admin without its optional signer, and what it imports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from core.settings import load
from gateway import _fast, admin
from gateway.config import GatewaySettings

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def without_pyjwt(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry makes `import jwt` raise ImportError, as if PyJWT were not installed.
    monkeypatch.setitem(sys.modules, "jwt", None)


@pytest.mark.parametrize(
    "argv",
    [
        ["token", "--election", "e1", "--voter", "v1"],
        ["mint", "--election", "e1", "--voters", "3", "--out", "votes.jsonl"],
    ],
)
def test_signing_commands_say_what_to_install_when_pyjwt_is_missing(
    argv: list[str], without_pyjwt: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert admin.main(argv) == 2
    err = capsys.readouterr().err
    assert "PyJWT" in err
    assert "pip install 'vote-platform[admin]'" in err


def test_minting_without_pyjwt_raises_a_clear_error(
    without_pyjwt: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("VOTE_STACK_DIR", str(tmp_path))
    admin.init_keys(load(GatewaySettings))
    with pytest.raises(admin.MissingExtra, match=r"vote-platform\[admin\]"):
        admin.mint_token(str(tmp_path / "keys" / "issuer.json"), "e1", "v1")


def test_init_keys_needs_no_pyjwt_and_writes_keys_the_gateway_loads(
    without_pyjwt: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("VOTE_STACK_DIR", str(tmp_path))
    settings = load(GatewaySettings)
    admin.init_keys(settings)
    keys = json.loads(Path(settings.jwks_file).read_text())
    ring = _fast.KeyRing(keys)
    assert len(ring) == 2
    for key in keys["keys"]:
        assert "d" not in key  # no Ed25519 private part in the gateway's file
        raw = _fast.b64url_decode(key["k"] if key["kty"] == "oct" else key["x"])
        assert len(raw) == 32


def test_tokens_minted_by_admin_pass_the_gateways_verification(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("VOTE_STACK_DIR", str(tmp_path))
    settings = load(GatewaySettings)
    admin.init_keys(settings)
    ring = _fast.KeyRing(json.loads(Path(settings.jwks_file).read_text()))
    issuer = str(tmp_path / "keys" / "issuer.json")
    for alg in ("HS256", "EdDSA"):
        token = admin.mint_token(issuer, "e1", "v1", alg=alg, now=1_000_000.0)
        sub, _jti, exp = _fast.verify_token(token, ring, "e1", 1_000_010.0, 0.0)
        assert (sub, exp) == ("v1", 1_000_000 + 3600)


def test_admin_does_not_import_the_pure_python_reference() -> None:
    # gateway._fast.reference is the test oracle, never a fallback for the compiled core.
    code = "import sys, gateway.admin; sys.exit('gateway._fast.reference' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=60)
    assert done.returncode == 0, "gateway.admin imported gateway._fast.reference"
