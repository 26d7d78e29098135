"""Input the API must refuse with a 400 naming the field, on SQLite and PostgreSQL (QA #4, #13, #14, #17): NUL in
call-analytics filters, phone numbers with extensions, letters or other scripts' digits, non-finite variable values;
and call-analytics' text filter taking `%` and `_` literally."""

from __future__ import annotations

import re

import pytest

from runtime.phone import InvalidPhoneNumber, to_e164
from tests.api_helpers import create_agent, refused, unique

ANALYTICS = "/api/v1/call-analytics"


def test_to_e164_refuses_what_phonenumbers_would_quietly_change():
    assert to_e164("+1 555-010-4242") == to_e164("+1 (555) 010-4242") == to_e164("+1.555.010.4242") == "+15550104242"
    arabic_indic = "+" + "".join(chr(0x0660 + int(d)) for d in "15550104242")
    fullwidth = "+" + "".join(chr(0xFF10 + int(d)) for d in "15550104242")
    for raw, why in {"+15550104243 ext. 99": "extension", "+15550104242;ext=5": "extension",
                     "+15550104242#99": "extension", "+15550104242 x5": "extension", "+1-800-FLOWERS": "letters",
                     "tel:+15550104247": "tel: URI", "+15550104244\x00": "NUL", "++15550104242": "'+'",
                     "+1555\u200b0104242": "ASCII", arabic_indic: "ASCII", fullwidth: "ASCII",
                     "+1 555 010 4242*": "'*'"}.items():
        with pytest.raises(InvalidPhoneNumber, match=re.escape(why)):
            to_e164(raw)


def test_placing_a_call_refuses_a_number_with_an_extension_or_letters(api):
    # Refused before the agent or the carrier is looked at: these were dialed without the extension.
    with api.client("admin") as c:
        agent = "0123456789abcdef0123456789abcdef"
        assert "extension" in refused(c.post("/api/v1/calls", json={"to": "+15550104242 ext. 55", "agent_id": agent}),
                                      "to", code="invalid_request")
        assert "letters" in refused(c.post("/api/call/create_call",
                                           params={"phoneNumber": "+1-800-FLOWERS", "agent_id": agent}),
                                    "phoneNumber", code="invalid_request")


def test_placing_a_call_refuses_non_finite_variable_values(api):
    # 1e400 is inf once parsed; it was stored as the variable "inf" and the call placed.
    with api.client("admin") as c:
        for value in (b"1e400", b"-1e400", b"NaN", b"Infinity"):
            body = b'{"to": "+15550104242", "agent_id": "x", "variables": {"x": %s}}' % value
            message = refused(c.post("/api/v1/calls", content=body, headers={"content-type": "application/json"}),
                              "variables")
            assert "x: must be a finite number" in message, value


@pytest.mark.parametrize("name", ["status", "direction", "agent_id", "batch_id"])
def test_call_analytics_refuses_nul_in_filters(api, name):
    # PostgreSQL cannot compare a text column with NUL: these were 500s there.
    with api.client("admin") as c:
        refused(c.get(ANALYTICS, params={name: "a\x00b"}), name)
        assert c.get(ANALYTICS, params={name: "ab"}).status_code == 200


def test_call_analytics_text_filter_takes_percent_and_underscore_literally(api):
    with api.client("other") as c:
        agent = create_agent(c, {"name": unique("filter"), "system_prompt": "p", "transcriber": {},
                                 "llm": {"provider": "scripted"}, "tts": {}})
        r = c.post("/api/v1/softphone/calls", json={"agent_id": agent["id"]})
        assert r.status_code == 201, r.text
        call_id = r.json()["call_id"]

        def total(text: str) -> int:
            got = c.get(ANALYTICS, params={"filter": text})
            assert got.status_code == 200, got.text
            return got.json()["pagination"]["total"]

        assert total(call_id[2:12]) == 1
        assert total(call_id[2:6] + "_" + call_id[7:12]) == 0  # as a wildcard, `_` matched the call's id
        assert total("%") == 0 and total(call_id[2:6] + "%" + call_id[7:12]) == 0
