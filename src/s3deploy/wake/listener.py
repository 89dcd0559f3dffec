"""One long-poll loop per wake-up queue: receive, wake the matching sections, delete (SPEC §13).

A :class:`QueueListener` asks its queue for up to 10 messages, waiting up to 20 s for the first (one
request per 20 s while nothing happens: ~180 an hour). Each message is read by
:func:`~s3deploy.wake.message.parse_message`; the batch's wakes are merged, so a burst of uploads calls
each callback once; then the handled messages are deleted in one DeleteMessageBatch.

A wake is only a hint: the callbacks only make a watcher poll now (its poll interval stays as the
fallback), so nothing here is trusted beyond "look at this object". Errors (missing queue, access denied,
network, a server that answers nonsense) are logged once per distinct error, backed off
(:func:`~s3deploy.common.backoff.backoff_delay`) and retried until ``stop``; they never leave ``run()``.
Setting ``stop`` ends a long poll at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

from s3deploy.common.backoff import backoff_delay
from s3deploy.common.text import bounded
from s3deploy.wake.address import QueueAddress, parse_queue_url
from s3deploy.wake.message import Wake, parse_message
from s3deploy.wake.sqs import READ_MARGIN_S, WAIT_S, QueueError, sqs_client, translate_error

logger = logging.getLogger(__name__)

T = TypeVar("T")
#: What a wake calls: cheap, synchronous, never blocking (e.g. ``asyncio.Event.set``).
Callback = Callable[[], None]

#: ReceiveMessage's most messages per request (SQS's maximum).
MAX_MESSAGES = 10
#: The longest one receive may take, botocore's retries included (a server trickling its answer).
RECEIVE_BOUND_S = 3 * (WAIT_S + READ_MARGIN_S)
#: The longest one DeleteMessageBatch may take.
DELETE_BOUND_S = 30.0
#: An empty answer quicker than this means the server does not hold long polls (some SQS-compatible
#: servers ignore WaitTimeSeconds): the next receive waits the rest of it, instead of spinning.
MIN_EMPTY_POLL_S = 1.0
#: Distinct errors remembered for "logged once"; past this the set starts again.
_MAX_REMEMBERED = 64


class QueueListener:
    """Long-polls one SQS queue and calls the callbacks of the objects its messages name.

    ``targets`` maps (bucket, key) to the callback waking the sections that watch that object;
    ``on_any`` wakes every section on this queue (called for a message that is not understood).
    The client signs with ``profile_name`` (None: the default credential chain) for the region the
    queue's host names, else ``region``, else the profile's.
    """

    def __init__(
        self,
        queue: str | QueueAddress,
        *,
        targets: Mapping[tuple[str, str], Callback],
        on_any: Callback,
        profile_name: str | None = None,
        region: str | None = None,
        retry_base_s: float = 1.0,
        retry_cap_s: float = 300.0,
    ) -> None:
        self.address = queue if isinstance(queue, QueueAddress) else parse_queue_url(queue)
        self.targets = dict(targets)
        self.on_any = on_any
        self.profile_name = profile_name
        self.region = region
        self.retry_base_s = retry_base_s
        self.retry_cap_s = retry_cap_s
        self.received = 0  # messages handled (read by the tests and, later, the metrics)
        self._client: Any = None
        self._stack = contextlib.AsyncExitStack()
        self._logged: set[str] = set()  # errors (operation: code) logged since the last good poll
        self._logged_deletes: set[str] = set()  # codes of failed deletions logged (for the whole run)
        self._said_unparsable = False
        self._said_short_poll = False

    async def __aenter__(self) -> QueueListener:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the SQS client (a later poll opens a new one)."""
        self._client = None
        await self._stack.aclose()

    @property
    def label(self) -> str:
        """The queue as log lines name it."""
        return f"wake-up queue {bounded(self.address.name, 80)}"

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until ``stop`` is set; every error is logged once, backed off, and retried."""
        failures = 0
        logger.info("%s: listening at %s", self.label, bounded(self.address.url))
        try:
            while not stop.is_set():
                started, before = time.monotonic(), self.received
                try:
                    await self.poll_once(stop)
                except QueueError as e:
                    failures += 1
                    await self._back_off(e, failures, stop)
                except Exception as e:  # a bug or an answer nothing expected: never stop the daemon
                    failures += 1
                    logger.debug("%s: unexpected error", self.label, exc_info=True)
                    await self._back_off(translate_error(e, "ReceiveMessage", self.address), failures, stop)
                else:
                    if failures:
                        logger.info("%s: receiving again after %d failed attempt(s)", self.label, failures)
                    failures = 0
                    self._logged.clear()
                    if self.received == before and not stop.is_set():
                        await self._after_empty(time.monotonic() - started, stop)
        finally:
            await self.aclose()

    async def _back_off(self, error: QueueError, failures: int, stop: asyncio.Event) -> None:
        delay = backoff_delay(failures, base_s=self.retry_base_s, cap_s=self.retry_cap_s)
        distinct = f"{error.op}: {error.code}"
        if distinct not in self._logged:
            if len(self._logged) >= _MAX_REMEMBERED:
                self._logged.clear()
            self._logged.add(distinct)
            logger.warning("%s (wake-ups paused, polling goes on; retrying in %.1fs)", error, delay)
        else:
            logger.debug("%s (retrying in %.1fs)", error, delay)
        await _sleep(delay, stop)

    async def _after_empty(self, elapsed_s: float, stop: asyncio.Event) -> None:
        if elapsed_s >= MIN_EMPTY_POLL_S:
            return
        if not self._said_short_poll:
            self._said_short_poll = True
            logger.warning(
                "%s: the server answered at once with no message (it does not hold long polls); "
                "receiving at most once a second",
                self.label,
            )
        await _sleep(MIN_EMPTY_POLL_S - elapsed_s, stop)

    async def poll_once(self, stop: asyncio.Event | None = None) -> Wake:
        """One ReceiveMessage (waiting up to 20 s, ended early by ``stop``), the wakes it asks for, and
        the deletion of what was handled. Returns the batch's merged Wake; raises QueueError."""
        client = await self._open()
        messages = await self._receive(client, stop)
        if not messages:
            return Wake()
        wake = Wake()
        for message in messages:
            one = _parse(message)
            logger.debug("%s: message %s: %s", self.label, bounded(message.get("MessageId"), 80), one.why)
            if one.empty:
                logger.info("%s: %s (nothing to wake)", self.label, one.why)
            elif one.everything and not self._said_unparsable:
                self._said_unparsable = True  # a stream of garbage is logged once, at debug after that
                logger.warning("%s: %s; waking every section on this queue", self.label, one.why)
            wake |= one
        self.received += len(messages)
        self._wake(wake)
        await self._delete(client, messages)
        return wake

    async def _open(self) -> Any:
        if self._client is None:
            try:
                self._client = await self._stack.enter_async_context(
                    sqs_client(self.address, self.profile_name, self.region)
                )
            except QueueError:
                raise
            except Exception as e:
                raise translate_error(e, "opening a client", self.address) from e
        return self._client

    async def _receive(self, client: Any, stop: asyncio.Event | None) -> list[dict[str, Any]]:
        logger.debug("%s: waiting up to %ds for messages", self.label, WAIT_S)
        request = client.receive_message(
            QueueUrl=self.address.url, MaxNumberOfMessages=MAX_MESSAGES, WaitTimeSeconds=WAIT_S
        )
        try:
            async with asyncio.timeout(RECEIVE_BOUND_S):
                response = await _unless_stopped(request, stop)
        except Exception as e:
            raise translate_error(e, "ReceiveMessage", self.address) from e
        if response is None:
            return []
        messages = response.get("Messages") if isinstance(response, Mapping) else None
        if not isinstance(messages, list):
            return []
        # SQS never sends more than asked; a server that does gets the rest back after their timeout.
        return [m for m in messages[:MAX_MESSAGES] if isinstance(m, dict)]

    def _wake(self, wake: Wake) -> None:
        if wake.everything:
            logger.debug("%s: waking every section", self.label)
            self._call(self.on_any, "every section")
            return
        for bucket, key in sorted(wake.objects):
            callback = self.targets.get((bucket, key))
            what = f"s3://{bounded(bucket, 80)}/{bounded(key)}"
            if callback is None:
                logger.debug("%s: %s is not watched here", self.label, what)
                continue
            logger.info("%s: %s changed: polling it now", self.label, what)
            self._call(callback, what)

    def _call(self, callback: Callback, what: str) -> None:
        try:
            callback()
        except Exception as e:  # a waker that fails must not lose the other wakes or stop the loop
            logger.warning("%s: waking %s failed: %s", self.label, what, bounded(e), exc_info=_debug())

    async def _delete(self, client: Any, messages: Sequence[Mapping[str, Any]]) -> None:
        entries = [
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
            for i, m in enumerate(messages)
            if isinstance(m.get("ReceiptHandle"), str)
        ]
        if not entries:
            return
        try:
            async with asyncio.timeout(DELETE_BOUND_S):
                response = await client.delete_message_batch(QueueUrl=self.address.url, Entries=entries)
        except Exception as e:
            raise translate_error(e, "DeleteMessageBatch", self.address) from e
        failed = response.get("Failed") if isinstance(response, Mapping) else None
        for item in failed if isinstance(failed, list) else []:
            code = bounded(item.get("Code") if isinstance(item, Mapping) else item, 80)
            level = logging.DEBUG if code in self._logged_deletes else logging.WARNING
            if len(self._logged_deletes) < _MAX_REMEMBERED:
                self._logged_deletes.add(code)
            logger.log(
                level, "%s: a message was not deleted (%s); it will be received again", self.label, code
            )


def _parse(message: Mapping[str, Any]) -> Wake:
    body = message.get("Body")
    if not isinstance(body, str):
        return Wake(everything=True, why="unparsable: a message without a text body")
    return parse_message(body)


async def _sleep(delay_s: float, stop: asyncio.Event) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), delay_s)


def _debug() -> bool:
    return logger.isEnabledFor(logging.DEBUG)


async def _unless_stopped(work: Coroutine[Any, Any, T], stop: asyncio.Event | None) -> T | None:
    """Await ``work``, or cancel it and return None as soon as ``stop`` is set."""
    if stop is None:
        return await work
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((task, stopped), return_when=asyncio.FIRST_COMPLETED)
    finally:
        task.cancel()  # no-op when done
        stopped.cancel()
        await asyncio.gather(task, stopped, return_exceptions=True)
    if task.cancelled():
        return None
    return task.result()  # its answer, or its exception (the answer wins over a stop at the same time)
