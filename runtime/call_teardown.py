"""Empty an ended call's pipecat objects so reference counting frees the call, not the cyclic collector.

A call's pipecat objects point at each other in more ways than can be listed: processors at their neighbours
(`_prev`/`_next`) and at the worker (`_setup`), pipelines' sources at their pipeline's bound methods, event
handlers at the session and the processors that registered them, the bus at its subscribers, the transport at its
client and back. So every ended call was one reference cycle of ~800 containers (the whole `Pipeline`, its queues,
events, tasks and last audio frames) that only a full collection freed: in 300-call soaks (4 calls at a time) no
call was freed any other way, and the server ended at 430 MB.

Once the worker has finished, nothing runs in these objects any more, so emptying them (each keeps its id and name,
for the repr of a late log line) breaks every cycle at once, and the last reference to go frees the call. In the
same soaks every call was freed that way, the server ended at 419–423 MB, and the full collections took 1.35–1.59 s
of the event loop in all instead of 2.04–2.32 s.

Only the call's own objects are emptied: the processors of the worker's pipeline (recursively), the worker and its
observer proxy, the transport and its client, and the pipecat objects those hold directly (the user aggregator's
turn, VAD and idle controllers, metrics, the assistant aggregator's summarizer). All of these are built per call
by the pipeline factory; what calls share (the Silero session, the local models, the VAD batcher) is held in plain
objects, never in a pipecat `BaseObject`, and `tests/test_call_teardown.py` checks that two calls share none of
what is emptied. Tied to pipecat 1.14's `PipelineWorker._pipeline`/`_observer` and the transports' `_client`,
pinned like the other seams.

Some plain objects (not pipecat's) that a call's processors make for themselves hold cycles too, and are emptied
with them, found by the attribute their owner keeps them in (`_HELPERS`): the transport's websocket client, the
TTS's audio contexts and the output's media senders, which voxline wraps with closures that refer back to them; the
services' SDK clients, whose parts refer to each other (OpenAI's resources hold the client's bound methods,
Deepgram's client wrapper and its HTTP client each other's). pipecat makes each in its owner's `__init__` or start,
one per call. What those clients hold in turn (the HTTP pool the server shares) is only let go of, never emptied.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from pipecat.processors.frame_processor import FrameProcessor
from pipecat.utils.base_object import BaseObject

_KEPT = ("_id", "_name")  # what BaseObject's __str__ reads
# Attributes naming an owner's own plain objects (a dict: its values), and what those hold of their own in turn.
_HELPERS = ("_client", "_audio_context_manager", "_media_senders")
_HELPERS_OF_HELPERS = ("_client_wrapper",)  # the Deepgram SDK's, not `_client`: the OpenAI SDK's is the shared pool


def call_objects(worker: BaseObject | None, *others: BaseObject | None) -> list[object]:
    """The objects that belong to one call: everything `release` empties."""
    roots = [o for o in (worker, getattr(worker, "_pipeline", None), getattr(worker, "_observer", None), *others)
             if isinstance(o, BaseObject)]
    root_ids = {id(o) for o in roots}
    seen: dict[int, object] = {}
    stack: list = list(roots)
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen[id(obj)] = obj
        if not _pipecat(obj):
            stack.extend(_helpers(obj, _HELPERS_OF_HELPERS))
            continue
        if isinstance(obj, FrameProcessor):
            stack.extend(obj.processors)
        stack.extend(_helpers(obj, _HELPERS))
        if isinstance(obj, FrameProcessor) or id(obj) in root_ids:
            stack.extend(_held(obj))  # one level down: what a processor holds directly was built with it
    return list(seen.values())


def _pipecat(value: object) -> bool:
    # Not isinstance: BaseObject is an ABC, whose check walks all of its ~100 subclasses for each type it has not
    # seen, ~5,000 checks and ~10 ms on the event loop at the first call's end. Nothing registers virtual ones.
    return BaseObject in type(value).__mro__


def _helpers(obj: object, names: tuple[str, ...]) -> Iterator[object]:
    state = vars(obj)
    for name in names:
        value = state.get(name)
        for v in value.values() if isinstance(value, dict) else (value,):
            if hasattr(v, "__dict__") and not isinstance(v, type):
                yield v


def _held(obj: object) -> Iterator[BaseObject]:
    for value in vars(obj).values():
        if _pipecat(value):
            yield value
        elif isinstance(value, (list, tuple)):
            yield from (v for v in value if _pipecat(v))


def release(objects: Iterable[object]) -> int:
    """Empty a finished call's objects; returns how many were emptied."""
    n = 0
    for obj in objects:
        state = vars(obj)
        kept = {k: state[k] for k in _KEPT if k in state}
        state.clear()
        state.update(kept)
        n += 1
    return n
