"""Listing and revoking API keys through ``pictofs serve --list-keys`` / ``--revoke-key``
(the real command line, while the server runs on the same folder), and a revoked key refused
by the running server from its next request on."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

API = "/api/v1/developer"


def serve_cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pictofs", "serve", "--data", str(data_dir), *args],
        capture_output=True, text=True, timeout=60)


def listed(data_dir: Path, *args: str) -> dict[str, list[str]]:
    """``--list-keys`` rows by key id (the header checked and left out)."""
    result = serve_cli(data_dir, "--list-keys", *args)
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["ID", "ORGANIZATION", "ROLE", "PREFIX", "CREATED", "REVOKED"]
    return {row.split()[0]: row.split() for row in rows}


def test_keys_are_listed_without_the_keys(ref_server, make_api):
    data = ref_server.data_dir
    made = serve_cli(data, "--create-key", "member")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip().splitlines()[-1]
    assert make_api(key).get("/me").json()["data"]["role"] == "member"
    org = f"keys-{uuid.uuid4().hex[:6]}"
    assert serve_cli(data, "--create-org", org).returncode == 0
    theirs = serve_cli(data, "--create-key", "viewer", "--org", org).stdout.strip()

    result = serve_cli(data, "--list-keys")
    assert result.returncode == 0, result.stderr
    for secret in (key, theirs, ref_server.key):
        assert secret not in result.stdout and secret[12:24] not in result.stdout
    rows = listed(data)
    mine = [r for r in rows.values() if r[3] == key[:12]]
    assert len(mine) == 1 and mine[0][1:3] == ["default", "member"] and mine[0][5] == "-"
    assert mine[0][4].endswith("Z")
    assert any(r[2] == "owner" and r[3] == ref_server.key[:12] for r in rows.values())
    only_theirs = listed(data, "--org", org)
    assert [r[1:4] for r in only_theirs.values()] == [[org, "viewer", theirs[:12]]]

    unknown = serve_cli(data, "--list-keys", "--org", "no-such-org")
    assert unknown.returncode == 1 and "no-such-org" in unknown.stderr
    assert "Traceback" not in unknown.stderr


def test_a_revoked_key_is_refused_at_once_by_the_running_server(ref_server, make_api, api,
                                                                 check_error):
    data = ref_server.data_dir
    key = serve_cli(data, "--create-key", "admin").stdout.strip().splitlines()[-1]
    admin = make_api(key)
    idem = uuid.uuid4().hex
    create = {"name": f"rev-{idem[:6]}"}
    assert admin.post("/datasets/", json=create, headers={"Idempotency-Key": idem}
                      ).status_code == 201
    key_id = next(i for i, r in listed(data).items() if r[3] == key[:12])

    revoked = serve_cli(data, "--revoke-key", key_id)
    assert revoked.returncode == 0, revoked.stderr
    assert key_id in revoked.stdout and key not in revoked.stdout

    # The running server refuses it from the next request on: reads, writes, and the replay
    # of an answer it was given before.
    check_error(admin.get("/me"), 401, "unauthorized")
    check_error(admin.get("/datasets/"), 401)
    check_error(admin.post("/datasets/", json=create, headers={"Idempotency-Key": idem}), 401)
    check_error(admin.post("/datasets/", json={"name": f"rev2-{idem[:6]}"}), 401)
    assert api.get("/me").status_code == 200  # the other keys still work
    row = listed(data)[key_id]
    assert row[5] != "-" and row[5].endswith("Z")

    again = serve_cli(data, "--revoke-key", key_id)  # revoking twice keeps the first time
    assert again.returncode == 0 and row[5] in again.stdout
    unknown = serve_cli(data, "--revoke-key", str(uuid.uuid4()))
    assert unknown.returncode == 1 and "no API key" in unknown.stderr
    assert "Traceback" not in unknown.stderr


def test_key_verbs_need_an_existing_data_folder(tmp_path):
    for args in (["--list-keys"], ["--revoke-key", "x"]):
        result = serve_cli(tmp_path / "none", *args)
        assert result.returncode == 1 and "no server data" in result.stderr
    assert not (tmp_path / "none" / "owner.key").exists()
