"""Read the engine's replies from async code: pushed onto the event loop by an engine that can (`chat_reply`), else
from a blocking generator run in its own thread (`stream_in_thread`); admit replies to the engine only while its
queue has room; notice clients that go away.

Why pushed: a thread per reply woke for each token of each reply and woke the loop in turn; on 2 cores that
time comes out of llama.cpp's two threads, which stall together whenever one is put aside (with 8 replies being
written, the API served ~13% fewer tokens a second than the engine called directly). The llama.cpp engine hands a
step's pieces to a `Relay`, which wakes the loop once for all of them.

A client that goes away cancels the async side (a streaming response is cancelled by starlette; a plain response
watches for the disconnect with `cancel_on_disconnect`, which sets the cancel flag, as the Stop button does). A
pushed reply then leaves the loop's wait at once and withdraws the request; a reply read in a thread stops at its
next item (a waiting engine stream sends empty chunks now and then for this) and closing the engine stream takes the
request out of the engine's queue or batch. Either way the chat service keeps the partial reply as interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from starlette.concurrency import run_in_threadpool

from thresher.engines import ChatParams, Chunk
from thresher.server.guard import ApiError

if TYPE_CHECKING:
    from thresher.chat import ChatService, Started

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


class Cancel(threading.Event):
    """A request's cancel flag (a client gone, a Stop button) that also wakes a reader waiting on the event loop
    for the engine's next piece."""

    def __init__(self) -> None:
        super().__init__()
        self.wake: Callable[[], None] | None = None

    def set(self) -> None:
        super().set()
        if self.wake is not None:
            self.wake()


class Relay:
    """Hands what the engine's thread makes to one event loop. The first item since the loop last looked schedules
    one call that takes everything that has arrived by then: a step's pieces of all the replies being written
    wake the loop once, not once each."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._pending: list[tuple[asyncio.Queue[Any], Any]] = []
        self._scheduled = False

    def send(self, queue: asyncio.Queue[Any], item: Any) -> None:
        """From any thread."""
        with self._lock:
            self._pending.append((queue, item))
            if self._scheduled:
                return
            self._scheduled = True
        with contextlib.suppress(RuntimeError):  # the loop closed (server shutting down): nobody is listening
            self.loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._lock:
            pending, self._pending, self._scheduled = self._pending, [], False
        for queue, item in pending:
            queue.put_nowait(item)


_relays: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Relay] = weakref.WeakKeyDictionary()
_CANCELLED = object()


def relay() -> Relay:
    """The running loop's relay."""
    loop = asyncio.get_running_loop()
    found = _relays.get(loop)
    if found is None:
        found = _relays[loop] = Relay(loop)
    return found


async def pushed(engine: Any, messages: Sequence[dict[str, str]], params: ChatParams,
                 cancel: Cancel) -> AsyncIterator[Chunk]:
    """An engine's reply (one with `push_chat`) read on the event loop until it ends or `cancel` is set; leaving
    withdraws the request from the engine."""
    queue: asyncio.Queue[Any] = asyncio.Queue()
    rl = relay()
    with anyio.CancelScope(shield=True):  # once submitted, the request is withdrawn below, whatever happens
        withdraw = await run_in_threadpool(engine.push_chat, messages, params,
                                           lambda item: rl.send(queue, item))  # (tokenizing is not the loop's)
    try:
        cancel.wake = lambda: rl.send(queue, _CANCELLED)
        while not cancel.is_set():
            item = await queue.get()
            if item is None or item is _CANCELLED:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        cancel.wake = None
        withdraw()


async def chat_reply(chat: ChatService, start: Callable[[], Started], cancel: Cancel,
                     ticket: Ticket | None = None) -> AsyncIterator[Chunk]:
    """A reply read from async code: `start` (one of `ChatService.start_*`, bound to its arguments) stores it and
    says what the engine is to answer, then the engine's chunks come as `ChatService.reply` gives them, the reply
    saved the same way (as it grows, then complete or interrupted). Pushed onto the loop when the engine can;
    else read in a thread."""
    engine = chat.engine
    if not hasattr(engine, "push_chat"):
        async for chunk in stream_in_thread(lambda c: chat.stream(*start(), c), cancel, ticket):
            yield chunk
        return
    try:
        record, prompt, params = await run_in_threadpool(start)
        try:
            async for chunk in pushed(engine, prompt, params, cancel):
                if record.add(chunk):
                    await run_in_threadpool(record.save)
                if chunk.text or chunk.waiting is not None:
                    yield chunk
        finally:
            with anyio.CancelScope(shield=True):  # a client that left still leaves its reply, interrupted
                await run_in_threadpool(record.close)
    finally:
        if ticket is not None:
            ticket.release()
        cancel.set()
    if record.final is not None:
        yield record.final


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
