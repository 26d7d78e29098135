"""A pipecat method's body, statement by statement, for the tests that pin voxline's seams to pipecat's source
(pipelines/frame_push.py and pipelines/frame_express.py copy methods; pipelines/turns/user_aggregator.py relies on
one's two statements): if pipecat's method changed, the seam is stale."""

from __future__ import annotations

import ast
import inspect
import textwrap


def statements(function, *, dropped: tuple[str, ...] = (), indented: bool = True) -> list[str]:
    """The body's lines after its signature and docstring, blank lines and `# noqa` marks left out, less every line
    containing one of `dropped` (what the copy adds). Name-mangled attributes read as written inside the class, so a
    module-level copy compares with pipecat's own. `indented=False` compares the lines without their indentation,
    for a copy that wraps some of them in a block of its own."""
    source = textwrap.dedent(inspect.getsource(function))
    body = ast.parse(source).body[0].body
    if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    lines = []
    for line in source.splitlines()[body[0].lineno - 1:]:
        code = line.split("  # noqa")[0].rstrip()
        if not code.strip() or any(d in code for d in dropped):
            continue
        code = code.replace("self._FrameProcessor__", "self.__")
        lines.append(code if indented else code.strip())
    return lines
