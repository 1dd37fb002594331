"""Warnings a user has to see while a graph runs: in the server log, and as text on the node
that is running (ComfyUI's ``progress_text`` message, which the frontend shows on the node).

ComfyUI sets the running node in ``comfy_execution.utils.get_executing_context`` (0.3.75 and
later) and ``PromptServer.send_progress_text(text, node_id)`` sends the text; outside a run (the
tests' in-process calls, the CLI) the warning only goes to the log.
"""
from __future__ import annotations

import logging

log = logging.getLogger("comfyui-acestep")


def running_node_id() -> str | None:
    """The id of the node ComfyUI is executing now (None outside a run)."""
    try:
        from comfy_execution.utils import get_executing_context
    except ImportError:
        return None
    context = get_executing_context()
    return None if context is None else str(context.node_id)


def warn_user(message: str) -> None:
    """Log ``message`` as a warning and show it on the running node."""
    log.warning(message)
    node_id = running_node_id()
    if node_id is None:
        return
    try:
        from server import PromptServer
        PromptServer.instance.send_progress_text(message, node_id)
    except Exception as err:  # the log line above is the fallback: never fail a run over this
        log.debug("could not show the warning on node %s: %s", node_id, err)
