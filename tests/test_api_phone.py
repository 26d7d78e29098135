"""Phone numbers: /api/v1/phone and the number → agent mapping, proven through the carrier's voice webhook.

The server is shared by the whole session, so every test uses numbers and agent names of its own.
"""

from __future__ import annotations

import secrets
import uuid

import httpx

from tests.api_helpers import create_agent, refused, unique

PHONE = "/api/v1/phone"
MAPPING = "/api/v1/phone/mapping"
NO_SUCH_ID = "0123456789abcdef0123456789abcdef"


def unique_digits() -> str:
    """Seven digits after +1 555, never 01000xx (the numbers the YAML agents hold)."""
    return str(1_000_000 + secrets.randbelow(9_000_000))


def unique_number() -> str:
    return "+1555" + unique_digits()


def register(c: httpx.Client, number: str | None = None, **fields) -> dict:
    r = c.post(PHONE, json={"number": number or unique_number(), **fields})
    assert r.status_code == 201, r.text
    return r.json()


def new_agent(c: httpx.Client, architecture: str = "pipeline") -> dict:
    name = unique(f"phone-{architecture}")
    if architecture == "text":
        return create_agent(c, {"name": name, "architecture": "text", "system_prompt": "p",
                                "llm": {"provider": "scripted"}})
    return create_agent(c, {"name": name, "system_prompt": "p", "transcriber": {"provider": "whisper"},
                            "llm": {"provider": "scripted"}, "tts": {"provider": "piper"}})




def answer(api, number: str) -> str:
    """The TwiML the voice webhook answers for a call to `number` (the API servers check no signature)."""
    r = httpx.post(f"{api.url}/telephony/twilio/voice", timeout=30,
                   data={"CallSid": "CA" + uuid.uuid4().hex, "From": "+15550199999", "To": number})
    assert r.status_code == 200, r.text
    return r.text


# --- numbers --------------------------------------------------------------------------------------------------------

def test_register_normalises_to_e164_then_get_and_list(api):
    digits = unique_digits()
    with api.client("developer") as c:
        created = c.post(PHONE, json={"number": f"+1 (555) {digits[:3]}-{digits[3:]}", "label": "front desk"})
        assert created.status_code == 201, created.text
        body = created.json()
        assert body["number"] == "+1555" + digits
        assert body["carrier"] == "twilio" and body["label"] == "front desk" and body["agent_id"] is None
        assert body["created_at"].endswith(("Z", "+00:00")) and body["updated_at"]
        got = c.get(f"{PHONE}/{body['id']}")
        listed = c.get(PHONE)
    assert got.status_code == 200 and got.json() == body
    assert listed.status_code == 200 and body in listed.json()["data"]


def test_register_refuses_an_invalid_number_naming_the_field(api):
    with api.client("admin") as c:
        short = c.post(PHONE, json={"number": "+1555"})
        assert refused(short, "number") == "number: '+1555' has the wrong length for its country code"
        assert "number:" in refused(c.post(PHONE, json={"number": "call me maybe"}), "number")
        refused(c.post(PHONE, json={"number": unique_number(), "carrier": "vonage"}), "carrier")
        refused(c.post(PHONE, json={"number": unique_number(), "label": "x" * 121}), "label")
        refused(c.post(PHONE, json={"number": unique_number(), "label": "nul\x00"}), "label")
        lone_surrogate = b'{"number": "%s", "label": "\\ud800"}' % unique_number().encode()
        refused(c.post(PHONE, content=lone_surrogate, headers={"content-type": "application/json"}), "label")
        refused(c.post(PHONE, json={"number": unique_number(), "agent_id": NO_SUCH_ID}), "agent_id")
        refused(c.post(PHONE, json={}), "number")


def test_register_refuses_extensions_letters_uris_and_odd_characters(api):
    # phonenumbers reads all of these leniently: the extension was dropped, the letters converted, and so on.
    n = unique_number()
    arabic_indic = "+" + "".join(chr(0x0660 + int(d)) for d in n[1:])
    cases = {f"{n} ext. 99": "has an extension (99)", f"{n};ext=5": "has an extension (5)",
             f"{n}#99": "has an extension (99)", "+1-800-FLOWERS": "contains letters", f"tel:{n}": "tel: URI",
             f"{n}\x00": "NUL", f"+{n}": "contains '+'", arabic_indic: "ASCII digits",
             f"{n[:5]}\u200b{n[5:]}": "ASCII digits"}
    with api.client("admin") as c:
        for raw, why in cases.items():
            assert why in refused(c.post(PHONE, json={"number": raw}), "number"), raw
        phone = register(c, f"+1 {n[2:5]}-{n[5:8]}-{n[8:]}")  # the usual separators still work
        assert phone["number"] == n
        assert "has an extension" in refused(c.patch(f"{PHONE}/{phone['id']}", json={"number": f"{n} x7"}), "number")
        assert c.get(f"{PHONE}/{phone['id']}").json() == phone


def test_a_number_is_registered_once_across_workspaces(api):
    number = unique_number()
    with api.client("admin") as c:
        register(c, number)
        again = c.post(PHONE, json={"number": f"{number[:2]} {number[2:5]} {number[5:]}"})
    assert again.status_code == 409 and again.json()["error"]["code"] == "conflict", again.text
    assert number in again.json()["error"]["message"]
    with api.client("other") as c:
        assert c.post(PHONE, json={"number": number}).status_code == 409
        # The YAML agents' numbers are taken too: calls are routed by number alone.
        assert c.post(PHONE, json={"number": "+15550100000"}).status_code == 409


def test_patch_changes_label_carrier_and_number(api):
    with api.client("developer") as c:
        phone = register(c, label="old")
        new_number = unique_number()
        r = c.patch(f"{PHONE}/{phone['id']}",
                    json={"label": "new", "carrier": "twilio", "number": f"{new_number[:2]} {new_number[2:]}"})
        assert r.status_code == 200, r.text
        assert r.json()["label"] == "new" and r.json()["number"] == new_number
        assert r.json()["updated_at"] >= phone["updated_at"] and r.json()["created_at"] == phone["created_at"]
        cleared = c.patch(f"{PHONE}/{phone['id']}", json={"label": None})
        assert cleared.status_code == 200 and cleared.json()["label"] is None
        assert cleared.json()["number"] == new_number  # absent fields stay as they were
        assert c.get(f"{PHONE}/{phone['id']}").json() == cleared.json()


def test_patch_refuses_invalid_input_and_a_taken_number(api):
    with api.client("admin") as c:
        phone, other = register(c), register(c)
        path = f"{PHONE}/{phone['id']}"
        refused(c.patch(path, json={"number": "+1555"}), "number")
        refused(c.patch(path, json={"number": None}), "number")
        refused(c.patch(path, json={"carrier": "vonage"}), "carrier")
        clash = c.patch(path, json={"number": other["number"]})
        assert clash.status_code == 409 and clash.json()["error"]["code"] == "conflict"
        assert c.patch(path, json={"number": phone["number"]}).status_code == 200  # its own number is no clash
        assert c.get(path).json()["number"] == phone["number"]


def test_delete_removes_the_number_and_its_mapping(api):
    with api.client("admin") as c:
        agent = new_agent(c)
        phone = register(c)
        assert c.post(MAPPING, json={"agent_id": agent["id"], "phone_number_id": phone["id"]}).status_code == 200
        assert "<Stream" in answer(api, phone["number"])
        r = c.delete(f"{PHONE}/{phone['id']}")
        assert r.status_code == 200 and r.json() == {"id": phone["id"], "deleted": True}
        assert c.get(f"{PHONE}/{phone['id']}").status_code == 404
        assert c.delete(f"{PHONE}/{phone['id']}").status_code == 404
        assert phone["id"] not in {n["id"] for n in c.get(PHONE).json()["data"]}
        assert c.get(f"{MAPPING}/agent/{agent['id']}").json()["data"] == []
        assert "not in service" in answer(api, phone["number"])
        register(c, phone["number"])  # free to register again


def test_unknown_number_ids_are_404(api):
    with api.client("admin") as c:
        for r in (c.get(f"{PHONE}/{NO_SUCH_ID}"), c.patch(f"{PHONE}/{NO_SUCH_ID}", json={"label": "x"}),
                  c.delete(f"{PHONE}/{NO_SUCH_ID}"), c.get(f"{PHONE}/not-an-id"), c.get(f"{MAPPING}/{NO_SUCH_ID}"),
                  c.delete(f"{MAPPING}/{NO_SUCH_ID}"), c.get(f"{MAPPING}/agent/{NO_SUCH_ID}")):
            assert r.status_code == 404, r.text
            assert r.json()["error"]["code"] == "not_found"


# --- mapping --------------------------------------------------------------------------------------------------------

def test_mapping_routes_calls_and_replaces_the_previous_mapping(api):
    with api.client("developer") as c:
        first, second = new_agent(c), new_agent(c)
        phone = register(c)
        assert "not in service" in answer(api, phone["number"])

        r = c.post(MAPPING, json={"agent_id": first["id"], "phone_number_id": phone["id"]})
        assert r.status_code == 200, r.text
        assert r.json() == {"phone_number_id": phone["id"], "number": phone["number"], "agent_id": first["id"]}
        assert "<Stream" in answer(api, phone["number"])
        assert c.get(f"{PHONE}/{phone['id']}").json()["agent_id"] == first["id"]

        r = c.post(MAPPING, json={"agent_id": second["id"], "phone_number_id": phone["id"]})
        assert r.status_code == 200 and r.json()["agent_id"] == second["id"]
        assert c.get(f"{MAPPING}/{phone['id']}").json()["agent_id"] == second["id"]
        assert c.get(f"{MAPPING}/agent/{first['id']}").json() == {"data": []}
        assert c.get(f"{MAPPING}/agent/{second['id']}").json() == {"data": [r.json()]}
        assert "<Stream" in answer(api, phone["number"])
    # The call went to the second agent.
    if api.backend == "sqlite":
        rows = api.server.query("SELECT agent_id FROM calls WHERE to_number = ? ORDER BY created_at", phone["number"])
        assert [row["agent_id"] for row in rows] == [first["id"], second["id"]]


def test_an_agent_can_have_several_numbers(api):
    with api.client("admin") as c:
        agent = new_agent(c)
        phones = [register(c), register(c)]
        for phone in phones:
            assert c.post(MAPPING, json={"agent_id": agent["id"], "phone_number_id": phone["id"]}).status_code == 200
        listed = c.get(f"{MAPPING}/agent/{agent['id']}")
    assert listed.status_code == 200
    assert sorted(m["number"] for m in listed.json()["data"]) == sorted(p["number"] for p in phones)
    assert all(m["agent_id"] == agent["id"] for m in listed.json()["data"])


def test_unmap_stops_calls(api):
    with api.client("admin") as c:
        agent = new_agent(c)
        phone = register(c)
        c.post(MAPPING, json={"agent_id": agent["id"], "phone_number_id": phone["id"]})
        assert "<Stream" in answer(api, phone["number"])
        r = c.delete(f"{MAPPING}/{phone['id']}")
        assert r.status_code == 200, r.text
        assert r.json() == {"phone_number_id": phone["id"], "number": phone["number"], "agent_id": None}
        assert c.get(f"{MAPPING}/{phone['id']}").json()["agent_id"] is None
        assert c.delete(f"{MAPPING}/{phone['id']}").status_code == 200  # unmapping twice is harmless
        assert c.get(f"{PHONE}/{phone['id']}").status_code == 200  # the number stays registered
    assert "not in service" in answer(api, phone["number"])


def test_a_text_agent_cannot_be_mapped(api):
    with api.client("admin") as c:
        agent = new_agent(c, "text")
        phone = register(c)
        r = c.post(MAPPING, json={"agent_id": agent["id"], "phone_number_id": phone["id"]})
        assert "text agents cannot take phone calls" in refused(r, "agent_id", code="invalid_request")
        assert c.get(f"{MAPPING}/{phone['id']}").json()["agent_id"] is None


def test_mapping_validation(api):
    with api.client("admin") as c:
        phone = register(c)
        refused(c.post(MAPPING, json={"phone_number_id": phone["id"]}), "agent_id")
        refused(c.post(MAPPING, json={"agent_id": NO_SUCH_ID}), "phone_number_id")
        missing = c.post(MAPPING, json={"agent_id": NO_SUCH_ID, "phone_number_id": phone["id"]})
        assert missing.status_code == 404 and missing.json()["error"]["message"] == "agent not found"


# --- keys and workspaces --------------------------------------------------------------------------------------------

def test_every_phone_route_needs_a_key(api):
    with api.client(None) as c:
        for r in (c.get(PHONE), c.post(PHONE, json={"number": unique_number()}), c.get(f"{PHONE}/{NO_SUCH_ID}"),
                  c.patch(f"{PHONE}/{NO_SUCH_ID}", json={}), c.delete(f"{PHONE}/{NO_SUCH_ID}"),
                  c.post(MAPPING, json={"agent_id": NO_SUCH_ID, "phone_number_id": NO_SUCH_ID}),
                  c.get(f"{MAPPING}/{NO_SUCH_ID}"), c.delete(f"{MAPPING}/{NO_SUCH_ID}"),
                  c.get(f"{MAPPING}/agent/{NO_SUCH_ID}")):
            assert r.status_code == 401, r.text
            assert r.json()["error"]["code"] == "missing_api_key"


def test_another_workspaces_numbers_and_agents_are_404(api):
    with api.client("admin") as c:
        agent = new_agent(c)
        phone = register(c)
        c.post(MAPPING, json={"agent_id": agent["id"], "phone_number_id": phone["id"]})
    with api.client("other") as c:
        theirs_agent, theirs_phone = new_agent(c), register(c)
        for r in (c.get(f"{PHONE}/{phone['id']}"), c.patch(f"{PHONE}/{phone['id']}", json={"label": "stolen"}),
                  c.delete(f"{PHONE}/{phone['id']}"), c.get(f"{MAPPING}/{phone['id']}"),
                  c.delete(f"{MAPPING}/{phone['id']}"), c.get(f"{MAPPING}/agent/{agent['id']}"),
                  # Either half of a mapping being another workspace's is enough.
                  c.post(MAPPING, json={"agent_id": theirs_agent["id"], "phone_number_id": phone["id"]}),
                  c.post(MAPPING, json={"agent_id": agent["id"], "phone_number_id": theirs_phone["id"]})):
            assert r.status_code == 404, r.text
            assert r.json()["error"]["code"] == "not_found"
        listed = {n["id"] for n in c.get(PHONE).json()["data"]}
        assert theirs_phone["id"] in listed and phone["id"] not in listed
    with api.client("admin") as c:
        assert c.get(f"{PHONE}/{phone['id']}").json()["label"] is None
        assert c.get(f"{MAPPING}/{phone['id']}").json()["agent_id"] == agent["id"]
        assert c.post(MAPPING, json={"agent_id": agent["id"],
                                     "phone_number_id": theirs_phone["id"]}).status_code == 404
    assert "<Stream" in answer(api, phone["number"])
