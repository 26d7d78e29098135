"""Short-lived signed tokens that admit one media stream to one call.

The webhook (or any other entry point that creates a call) mints one; the stream socket must present it in
`start.customParameters`. Signed with the server's secret key and bound to the call id, they expire after
`stream_token_ttl_secs`; the store additionally lets a call attach a stream only once.
"""

from __future__ import annotations

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

_SALT = "voxline.stream-token.v1"


class TokenError(ValueError):
    pass


class StreamTokens:
    def __init__(self, secret: str, ttl_secs: int, *, salt: str = _SALT):
        # Another salt makes another kind of token: one kind never passes for another (e.g. softphone events).
        self._serializer = URLSafeTimedSerializer(secret, salt=salt)
        self._ttl = ttl_secs

    def mint(self, call_id: str) -> str:
        return self._serializer.dumps({"call": call_id})

    def verify(self, token: str, call_id: str) -> None:
        """Raise TokenError unless `token` is a fresh token for `call_id`."""
        try:
            data = self._serializer.loads(token, max_age=self._ttl)
        except SignatureExpired as exc:
            raise TokenError("stream token expired") from exc
        except BadSignature as exc:
            raise TokenError("stream token signature invalid") from exc
        if not isinstance(data, dict) or data.get("call") != call_id:
            raise TokenError("stream token is for another call")
