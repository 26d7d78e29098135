"""What turn-taking needs from the carrier's audio output, whatever the carrier: go quiet without losing the
agent's place, carry on or drop what was held, and confirm when audio has actually played."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol


class Playout(Protocol):
    async def hold(self) -> bool:
        """Stop the agent's audio at the caller now, keeping unplayed audio. False if it cannot be held (the
        audio playing may not be interrupted, or nothing is playing)."""

    async def resume(self) -> None:
        """Carry on from where `hold` stopped, replaying what the carrier's buffer dropped."""

    def drop(self) -> None:
        """Forget what was held: the agent has been interrupted."""

    @property
    def holding(self) -> bool: ...

    async def mark(self, name: str) -> None:
        """Ask the carrier to report `name` once the audio sent before it has played."""

    def on_mark(self, callback: Callable[[str], Awaitable[None]]) -> None:
        """Where the carrier's played-mark reports go."""
