"""Why a call ended: one enum naming the fault domain, as stored in `calls.disconnection_reason`."""

from enum import StrEnum


class DisconnectionReason(StrEnum):
    CALLER_HANGUP = "caller_hangup"
    AGENT_HANGUP = "agent_hangup"
    TRANSFER = "transfer"
    MAX_DURATION = "max_duration"
    SILENCE_TIMEOUT = "silence_timeout"
    VOICEMAIL = "voicemail"
    DIAL_BUSY = "dial_busy"
    DIAL_NO_ANSWER = "dial_no_answer"
    DIAL_FAILED = "dial_failed"
    ERROR_STT = "error_stt"
    ERROR_LLM = "error_llm"
    ERROR_TTS = "error_tts"
    ERROR_REALTIME = "error_realtime"
    ERROR_CARRIER = "error_carrier"
    ERROR_INTERNAL = "error_internal"
    SERVER_SHUTDOWN = "server_shutdown"
    CONCURRENCY_LIMIT = "concurrency_limit_reached"  # refused at the door: the server was full (runtime/capacity.py)

    @property
    def is_error(self) -> bool:
        return self.value.startswith("error_") or self.value == DisconnectionReason.DIAL_FAILED

    @property
    def ended_by(self) -> str:
        """Who ended the call: `caller`, `agent` (its own decision or a call control), or `system` (a fault)."""
        if self is DisconnectionReason.CALLER_HANGUP:
            return "caller"
        if self in _AGENT_ENDINGS:
            return "agent"
        return "system"


_AGENT_ENDINGS = {DisconnectionReason.AGENT_HANGUP, DisconnectionReason.TRANSFER, DisconnectionReason.MAX_DURATION,
                  DisconnectionReason.SILENCE_TIMEOUT, DisconnectionReason.VOICEMAIL}
