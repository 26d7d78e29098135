"""Keys, workspaces and auth: /api/v1/me and /api/v1/api-keys."""

from __future__ import annotations

import sqlite3

from tests.api_helpers import refused


def test_me_names_workspace_key_and_role(api):
    with api.client("developer") as c:
        r = c.get("/api/v1/me")
    assert r.status_code == 200
    assert r.json()["workspace"]["name"] == "default"
    assert r.json()["key"] == {"id": r.json()["key"]["id"], "name": "test developer", "role": "developer"}


def test_keys_are_accepted_as_x_api_key_or_bearer_and_refused_otherwise(api):
    with api.client(None) as c:
        assert c.get("/api/v1/me", headers={"Authorization": f"Bearer {api.admin_key}"}).status_code == 200
        assert c.get("/api/v1/me", headers={"x-api-key": api.admin_key}).status_code == 200
        missing = c.get("/api/v1/me")
        wrong = c.get("/api/v1/me", headers={"x-api-key": "vxl_not-a-real-key"})
        basic = c.get("/api/v1/me", headers={"Authorization": f"Basic {api.admin_key}"})
    assert missing.status_code == wrong.status_code == basic.status_code == 401
    assert missing.json()["error"] == {"code": "missing_api_key", "message": missing.json()["error"]["message"],
                                       "status": 401, "details": []}
    assert wrong.json()["error"]["code"] == "invalid_api_key"


def test_create_list_rename_revoke(api):
    with api.client("admin") as c:
        created = c.post("/api/v1/api-keys", json={"name": "ci", "role": "developer"})
        assert created.status_code == 201
        body = created.json()
        secret = body["api_key"]
        assert secret.startswith("vxl_") and body["prefix"] == secret[:12] and body["role"] == "developer"

        listed = c.get("/api/v1/api-keys").json()["data"]
        mine = next(k for k in listed if k["id"] == body["id"])
        assert "api_key" not in mine and all(secret not in str(k) for k in listed)

        renamed = c.patch(f"/api/v1/api-keys/{body['id']}", json={"name": "ci-2"})
        assert renamed.status_code == 200 and renamed.json()["name"] == "ci-2"

        assert c.get("/api/v1/me", headers={"x-api-key": secret}).status_code == 200
        revoked = c.delete(f"/api/v1/api-keys/{body['id']}")
        assert revoked.status_code == 200 and revoked.json()["revoked_at"]
        # Refused on the very next request: no cache.
        again = c.get("/api/v1/me", headers={"x-api-key": secret})
        assert again.status_code == 401 and again.json()["error"]["code"] == "invalid_api_key"


def test_key_management_needs_an_admin(api):
    with api.client("developer") as c:
        for r in (c.get("/api/v1/api-keys"), c.post("/api/v1/api-keys", json={"name": "x"}),
                  c.patch("/api/v1/api-keys/abc", json={"name": "x"}), c.delete("/api/v1/api-keys/abc")):
            assert r.status_code == 403, r.text
            assert r.json()["error"]["code"] == "forbidden"


def test_another_workspaces_key_is_404(api):
    with api.client("admin") as c:
        key_id = c.post("/api/v1/api-keys", json={"name": "mine"}).json()["id"]
    with api.client("other") as c:
        assert c.patch(f"/api/v1/api-keys/{key_id}", json={"name": "stolen"}).status_code == 404
        assert c.delete(f"/api/v1/api-keys/{key_id}").status_code == 404
        assert all(k["id"] != key_id for k in c.get("/api/v1/api-keys").json()["data"])


def test_key_create_validation(api):
    with api.client("admin") as c:
        r = c.post("/api/v1/api-keys", json={"role": "owner"})
        assert r.status_code == 400
        assert r.json()["error"]["code"] == "validation_error" and r.json()["error"]["details"][0]["field"] == "role"
        assert c.post("/api/v1/api-keys", content=b"{not json", headers={"content-type": "application/json"}).status_code == 400


def test_keys_are_stored_hashed(api):
    with api.client("admin") as c:
        secret = c.post("/api/v1/api-keys", json={"name": "hashed"}).json()["api_key"]
    if api.backend == "sqlite":
        con = sqlite3.connect(api.server.data_dir / "voxline.db")
        dump = "\n".join(con.iterdump())
        con.close()
        assert secret not in dump and secret[12:] not in dump


def test_nul_in_a_key_name_is_refused_naming_the_field(api):
    # PostgreSQL cannot store NUL in a text column: this was a 500 there (and stored on SQLite).
    with api.client("admin") as c:
        refused(c.post("/api/v1/api-keys", json={"name": "n\x00ul"}), "name")
        key = c.post("/api/v1/api-keys", json={"name": "clean"}).json()
        refused(c.patch(f"/api/v1/api-keys/{key['id']}", json={"name": "re\x00named"}), "name")
        assert next(k for k in c.get("/api/v1/api-keys").json()["data"] if k["id"] == key["id"])["name"] == "clean"
