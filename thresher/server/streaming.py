"""Run a blocking generator (the engine) in its own thread and read it from async code.

A client that goes away cancels the async side; the `finally` below sets the cancel event, the producer thread stops
at the next token, and the chat service keeps the partial reply as interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TypeVar

T = TypeVar("T")
_END = object()


async def stream_in_thread(
    start: Callable[[threading.Event], Iterator[T]], cancel: threading.Event | None = None
) -> AsyncIterator[T]:
    """`cancel` (made here if not given) is handed to `start`; setting it from elsewhere (a Stop button) stops the
    producer at its next item, as a client going away does."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue()
    cancel = cancel or threading.Event()

    def put(item: object) -> None:
        # If the loop closed under us (server shutting down), nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def produce() -> None:
        try:
            gen = start(cancel)
            try:
                for item in gen:
                    put(item)
                    if cancel.is_set():
                        break
            finally:
                gen.close()  # type: ignore[attr-defined]
        except BaseException as e:  # handed to the reader, which re-raises it in the request's context
            put(e)
        finally:
            put(_END)

    threading.Thread(target=produce, name="thresher-generate", daemon=True).start()
    try:
        while True:
            item = await queue.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        cancel.set()
