"""Run a blocking generator (the engine) in its own thread and read it from async code; admit replies to the engine
only while its queue has room; notice clients that go away.

A client that goes away cancels the async side (a streaming response is cancelled by starlette; a plain response
watches for the disconnect with `cancel_on_disconnect`); the `finally` below sets the cancel event, the producer
thread stops at its next item (a waiting engine stream sends empty chunks now and then for this), closing the engine
stream takes the request out of the engine's queue or batch, and the chat service keeps the partial reply as
interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

from thresher.server.guard import ApiError

T = TypeVar("T")
_END = object()


async def stream_in_thread(
    start: Callable[[threading.Event], Iterator[T]], cancel: threading.Event | None = None,
    ticket: Ticket | None = None,
) -> AsyncIterator[T]:
    """`cancel` (made here if not given) is handed to `start`; setting it from elsewhere (a Stop button) stops the
    producer at its next item, as a client going away does. `ticket` (from `Admission.admit`) is given back when
    the producer has finished: the engine has let go of the request."""
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
            if ticket is not None:
                ticket.release()
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


async def cancel_on_disconnect(request: Any, cancel: threading.Event, items: AsyncIterator[T]) -> AsyncIterator[T]:
    """`items`, with `cancel` set if the client disconnects meanwhile: for a response sent only at the end, which
    nothing else would stop (starlette cancels a streaming response itself)."""

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        cancel.set()

    task = asyncio.create_task(watch())
    try:
        async for item in items:
            yield item
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class Admission:
    """A bound on the chat replies in flight: those the engine is writing (`n_parallel` at once) and at most
    `max_queue` waiting for it. A request beyond it is refused before anything is stored: 503 with Retry-After, in
    the OpenAI error shape (the chat page shows the message)."""

    def __init__(self, max_queue: int) -> None:
        self.max_queue = max_queue
        self.held = 0
        self._lock = threading.Lock()
        self._seconds = 10.0  # how long a reply is held, averaged: for Retry-After

    def admit(self, engine: Any) -> Ticket:
        """A place for one reply to `engine`, which writes `engine.n_parallel` replies at once (1 if it does not
        say); ApiError 503 when there is none."""
        limit = max(1, getattr(engine, "n_parallel", 1)) + self.max_queue
        with self._lock:
            if self.held >= limit:
                # Little's law: with `limit` held, one leaves every (time held / limit) seconds on average.
                retry = max(1, min(60, math.ceil(self._seconds / limit)))
                raise ApiError(503, f"the server is busy: {self.held} replies are being written or waiting for "
                               f"their turn, as many as it takes; try again in {retry} s", "server_busy",
                               headers={"Retry-After": str(retry)})
            self.held += 1
        return Ticket(self)

    def _release(self, ticket: Ticket) -> None:
        with self._lock:
            if ticket.released:
                return
            ticket.released = True
            self.held -= 1
            self._seconds = 0.8 * self._seconds + 0.2 * (time.monotonic() - ticket.since)


class Ticket:
    """One admitted reply's place. Give it to `stream_in_thread`, which gives it back when the engine is done; a
    ticket dropped on the way (the request failed before streaming) gives its place back when collected."""

    def __init__(self, admission: Admission) -> None:
        self.admission, self.since, self.released = admission, time.monotonic(), False

    def release(self) -> None:
        self.admission._release(self)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.release()
