"""Running the core's commands on GLPI: the retry policy, the intent and late-commit protocol, the outcome classes.

The design (what is retried, what pauses a hook, what is dead-lettered) is in :mod:`app.execute`.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from app.files.policy import MIB, megabytes
from app.files.transfer import FetchError, FileMover, FileTooLargeError
from app.glpi import (
    Criterion,
    GlpiAuthError,
    GlpiClient,
    GlpiError,
    GlpiRejectedError,
    GlpiRetryableError,
    GlpiSessionInvalidError,
)
from app.sync import mapping
from app.sync.commands import (
    AddRequester,
    Applied,
    CheckTicket,
    Command,
    Create,
    CreateFollowup,
    CreateTicket,
    EnsureContact,
    EnsureUser,
    EnsureUserEmail,
    FileKept,
    LinkFiles,
    Lookup,
    Outcome,
    Resolved,
    SearchCriterion,
    StoreFile,
    TicketState,
    UpdateItem,
    cautious,
)
from app.sync.state import PauseKind

#: A decision needs at most: contact ensure, ticket, requester, check, replacement, followup (+ update, email).
MAX_STEPS = 12
#: One event may replace its conversation's ticket this many times (deleted, then closed, ...), never loop.
MAX_REPLACEMENTS = 2
USER_EXISTS = "Unable to add. The user already exists."
#: While an earlier POST may still land, look for its object this often instead of creating again.
LATE_COMMIT_POLL = 2.0


class HookUnavailable(Exception):  # noqa: N818 - an outcome, named after what it tells the caller
    """The hook as a whole cannot work now: pause it (``kind``) and park its events.

    ``request_specific`` marks a transient failure of one request while GLPI answers others (counted per event).
    """

    def __init__(self, kind: PauseKind, reason: str, code: str | None = None, *, request_specific: bool = False):
        super().__init__(reason)
        self.kind: PauseKind = kind
        self.reason = reason
        self.code = code
        self.request_specific = request_specific


class EventRejected(Exception):  # noqa: N818 - an outcome, named after what it tells the caller
    """This event cannot be synced (GLPI refused it, or only it): dead-letter it and let the hook carry on."""

    def __init__(self, reason: str, error: GlpiError | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error_class = type(error).__name__ if error is not None else "EventRejected"
        self.code = error.code if error is not None else None
        self.status = error.status if error is not None else None


class OperatorInterrupt(Exception):  # noqa: N818 - an outcome, named after what it tells the caller
    """An operator command for the hook (``hook skip``, ``pause``, ``disable``) is waiting: stop retrying now.

    Raised only where waiting is safe to cut (between two attempts: every intent is already durable). The
    pipeline parks the event at the head of its hook's queue; the command then applies to it.
    """


class CreateOutcomeUnknownError(GlpiRetryableError):
    """A create's POST failed in a way that leaves its outcome unknown; ``posted_at`` is when it started."""

    def __init__(self, cause: GlpiRetryableError, posted_at: float) -> None:
        super().__init__(cause.code, cause.message, cause.status, cause.retry_after, still_running=cause.still_running)
        self.posted_at = posted_at


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, bounded by ``budget`` seconds per command.

    ``late_commit_window``: seconds after a create's POST started during which GLPI may still commit it.
    ``verify_delay``: after a create that followed an uncertain one, look again this long after it for a copy the
    earlier attempt committed later still than the window allowed, and remove it.
    """

    base: float = 0.5
    cap: float = 30.0
    budget: float = 45.0
    late_commit_window: float = 120.0
    verify_delay: float = 5.0
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    rand: Callable[[], float] = field(default=random.random)
    clock: Callable[[], float] = field(default=time.time)

    def delay(self, attempt: int, retry_after: float | None) -> float:
        backoff = float(min(self.cap, self.base * 2 ** (attempt - 1)) * self.rand())
        return max(backoff, retry_after or 0.0)


#: Called with the create and the POST's start time, before the POST; must return once the intent is durable.
BeforePost = Callable[[Create, float], Awaitable[None]]
#: Called with the create when GLPI definitely refused its POST (nothing can land: the intent can go).
AfterRefusal = Callable[[Create], Awaitable[None]]


def _upload_error(result: dict[str, object]) -> str | None:
    """The error GLPI's upload handler reported for the file, if any (``upload_result.filename[0].error``)."""
    files = result.get("filename")
    first = files[0] if isinstance(files, list) and files else None
    error = first.get("error") if isinstance(first, dict) else None
    return str(error)[:200] if error else None


def _criteria(lookup: Lookup) -> list[Criterion]:
    return [Criterion(c.field, c.searchtype, c.value, c.link) for c in lookup.criteria]


def _login(login: str) -> SearchCriterion:
    return SearchCriterion(1, "contains", f"^{login}$")


class GlpiExecutor:
    """Runs one :data:`~app.sync.commands.Command` against a hook's :class:`GlpiClient`."""

    def __init__(
        self,
        client: GlpiClient,
        policy: RetryPolicy | None = None,
        on_retry: Callable[[str], None] | None = None,
        on_duplicate_removed: Callable[[str], None] | None = None,
        interrupt: asyncio.Event | None = None,
        files: FileMover | None = None,
        hook_id: int = 0,
    ) -> None:
        self.client = client
        #: Moves attachments into GLPI (None: files stay links).
        self.files = files
        self.hook_id = hook_id
        self.policy = policy or RetryPolicy()
        self.interrupt = interrupt
        self._on_retry = on_retry
        self._on_duplicate_removed = on_duplicate_removed
        self._waited = 0.0  # seconds the current attempt spent waiting for an earlier POST
        self._after_refusal: AfterRefusal | None = None

    async def run(
        self, cmd: Command, before_post: BeforePost | None = None, after_refusal: AfterRefusal | None = None
    ) -> Outcome:
        """Run ``cmd``, retrying transient errors within the policy's budget; other errors propagate.

        Time spent waiting for an earlier POST to become impossible does not use up the budget.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.policy.budget
        attempt = 0
        self._after_refusal = after_refusal
        #: An update whose attempt may still land later (GLPI never answered it): when it no longer can.
        update_landing = 0.0
        while True:
            attempt += 1
            self._waited = 0.0
            started = self.policy.clock()
            try:
                outcome = await self._run_once(cmd, before_post)
                if update_landing and isinstance(cmd, UpdateItem):
                    await self._settle(cmd, update_landing)
                return outcome
            except CreateOutcomeUnknownError as exc:
                # The POST may have created the object, or may still: look first, and no new POST before it
                # can no longer land (GLPI's own error answers mean PHP is done: looking once is enough).
                landing = exc.posted_at + self.policy.late_commit_window if exc.still_running else 0.0
                cmd = cautious(cmd, landing)
                error: GlpiRetryableError = exc
            except GlpiRetryableError as exc:
                error = exc
                if exc.still_running and isinstance(cmd, UpdateItem):
                    update_landing = max(update_landing, started + self.policy.late_commit_window)
            except GlpiSessionInvalidError as exc:
                # GLPI lost the session again right after the client opened a new one (sessions expiring fast, a
                # GLPI behind a load balancer whose nodes do not share sessions): GLPI refused the request before
                # doing anything, so trying again is safe, and no reason to give this event up.
                error = GlpiRetryableError(exc.code, exc.message, exc.status, uncertain=False)
            deadline += self._waited  # waiting for an earlier POST to become impossible is not retrying
            wait = self.policy.delay(attempt, error.retry_after)
            if loop.time() + wait > deadline:
                raise error
            if self._on_retry is not None:
                self._on_retry(error.code)
            await self._wait(wait)

    async def _settle(self, cmd: UpdateItem, landing: float) -> None:
        """After an update an earlier attempt of which may land later: once it can no longer, make ours the last.

        A timed-out ``PUT status=5`` that PHP carries out a minute later would otherwise undo the ``status=2`` of the
        conversation's next event. The event waits (an operator command cuts it short), reads the item and, when a
        late attempt overwrote what this command set, sets it again.
        """
        # The window is how long GLPI may take; a little more covers one that took exactly that long.
        pause = landing + self.policy.verify_delay - self.policy.clock()
        if pause > 0:
            await self._wait(pause)
            self._waited += pause
        item = await self.client.get_item(cmd.itemtype, cmd.item_id)
        if any(item.get(key) != value for key, value in cmd.input.items() if key == "status"):
            await self.client.update(cmd.itemtype, cmd.item_id, await self._fitted(cmd.itemtype, cmd.input))

    async def _wait(self, seconds: float) -> None:
        """Sleep between two attempts; an operator command for the hook cuts it short (:class:`OperatorInterrupt`)."""
        if self.interrupt is None:
            await self.policy.sleep(seconds)
            return
        if not self.interrupt.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.interrupt.wait(), seconds)
        if self.interrupt.is_set():
            raise OperatorInterrupt("an operator command for this hook is waiting")

    async def _find(self, itemtype: str, lookups: tuple[Lookup, ...]) -> int | None:
        for lookup in lookups:
            ids = await self.client.search_ids(itemtype, _criteria(lookup))
            if ids:
                return ids[0]  # several matches: adopt the oldest
        return None

    async def _look(self, cmd: Create) -> int | None:
        """The object an earlier attempt of ``cmd`` created, if GLPI holds it."""
        match cmd:
            case EnsureUser():
                return await self._find("User", (*cmd.lookups, Lookup((_login(cmd.login),), "login")))
            case EnsureContact():
                return await self._find("Contact", (*cmd.fallbacks[:1], *cmd.lookups, *cmd.fallbacks[1:]))
            case CreateTicket():
                ids = await self.client.search_ids("Ticket", [Criterion(21, "contains", cmd.marker)])
                return ids[0] if ids else None
            case CreateFollowup():
                found = await self._followups_with(cmd.ticket_id, cmd.marker)
                return found[0] if found else None
            case StoreFile():
                found = await self._documents_with(cmd.marker)
                return found[0] if found else None

    async def _documents_with(self, marker: str) -> list[int]:
        """Documents whose comment carries ``marker`` (search option 16), ascending."""
        return await self.client.search_ids("Document", [Criterion(16, "contains", marker)])

    async def _followups_with(self, ticket_id: int, marker: str) -> list[int]:
        rows = await self.client.get_subitems("Ticket", ticket_id, "ITILFollowup")
        return sorted(
            row["id"]
            for row in rows
            if isinstance(row.get("id"), int) and marker in html.unescape(str(row.get("content", "")))
        )

    async def _wait_for_earlier(self, cmd: Create) -> int | None:
        """Look for ``cmd``'s object until an earlier POST can no longer land; its id once found, else None."""
        found = await self._look(cmd)
        while found is None and self.policy.clock() < cmd.not_before:
            pause = min(LATE_COMMIT_POLL, cmd.not_before - self.policy.clock())
            await self._wait(pause)
            self._waited += pause
            found = await self._look(cmd)
        return found

    async def _fitted(self, itemtype: str, fields: dict[str, object]) -> dict[str, object]:
        """``fields`` with their varchar values cut to what this GLPI stores (10 counts encoded ``&<>``; 11 not)."""
        if not any(name in fields for name in mapping.VARCHAR_FIELDS.get(itemtype, ())):
            return dict(fields)
        server = await self.client.server_info()
        return mapping.fit_fields(itemtype, dict(fields), encoded=server.encodes_text)

    async def _post(self, cmd: Create, itemtype: str, fields: dict[str, object], before: BeforePost | None) -> int:
        fields = await self._fitted(itemtype, fields)
        posted_at = self.policy.clock()
        if before is not None:
            await before(cmd, posted_at)
        try:
            return await self.client.create(itemtype, fields)
        except GlpiRetryableError as exc:
            if exc.uncertain:
                raise CreateOutcomeUnknownError(exc, posted_at) from exc
            await self._refused(cmd)
            raise
        except GlpiError:
            await self._refused(cmd)
            raise

    async def _refused(self, cmd: Create) -> None:
        if self._after_refusal is not None:
            await self._after_refusal(cmd)

    async def _create(
        self, cmd: Create, itemtype: str, fields: dict[str, object], before: BeforePost | None
    ) -> Resolved:
        """Find-else-POST with the late-commit rule; after an uncertain earlier attempt, keep one object only."""
        if cmd.lookup_first:
            found = await self._wait_for_earlier(cmd)
            if found is not None:
                return Resolved(found, created=False)
        new_id = await self._post(cmd, itemtype, fields, before)
        if cmd.not_before > 0:
            # The window should have made a late commit impossible; if GLPI was slower still, keep one object.
            await self.policy.sleep(self.policy.verify_delay)
            await self._keep_only(cmd, new_id)
        return Resolved(new_id)

    async def _keep_only(self, cmd: Create, kept: int) -> None:
        """Remove objects carrying ``cmd``'s marker other than ``kept`` (a late commit of an earlier attempt)."""
        match cmd:
            case CreateTicket():
                extra = await self.client.search_ids("Ticket", [Criterion(21, "contains", cmd.marker)])
                itemtype, purge = "Ticket", False
            case CreateFollowup():
                extra = await self._followups_with(cmd.ticket_id, cmd.marker)
                itemtype, purge = "ITILFollowup", True
            case EnsureContact():
                extra = await self.client.search_ids("Contact", _criteria(cmd.fallbacks[0])) if cmd.fallbacks else []
                itemtype, purge = "Contact", False
            case StoreFile():
                extra = await self._documents_with(cmd.marker)
                itemtype, purge = "Document", True
            case EnsureUser():
                return  # logins are unique in GLPI: a second User cannot exist
        for item_id in extra:
            if item_id != kept:
                await self.client.delete(itemtype, item_id, purge=purge)
                if self._on_duplicate_removed is not None:
                    self._on_duplicate_removed(itemtype)

    def _kept(self, outcome: str, reason: str) -> FileKept:
        if self.files is not None:
            self.files.observe("to_glpi", outcome)
        return FileKept(reason)

    async def _stored(self, document_id: int) -> bool:
        """Whether the Document holds a file (a refused type or size leaves one without ``sha1sum``)."""
        document = await self.client.get_item("Document", document_id)
        return bool(document.get("sha1sum"))

    async def _store_file(self, cmd: StoreFile, before: BeforePost | None) -> Resolved | FileKept:
        """Download the attachment and upload it as a Document (found instead when an earlier upload landed).

        What stops one file (too large, unreachable, refused by GLPI) is a :class:`FileKept` for the followup to
        explain, never a failure of the message. Only GLPI being unreachable is retried as for any command.
        """
        if cmd.lookup_first:
            found = await self._wait_for_earlier(cmd)
            if found is not None:
                if await self._stored(found):
                    if self.files is not None:
                        self.files.observe("to_glpi", "adopted")
                    return Resolved(found, created=False)
                await self.client.delete("Document", found, purge=True)  # an earlier upload GLPI kept no file of
        if self.files is None:
            return self._kept("not_allowed", "this worker does not move files")
        glpi_cap = (await self.client.server_info()).document_max_size_mb
        cap = min(self.files.max_bytes, glpi_cap * MIB) if glpi_cap else self.files.max_bytes
        try:
            fetched = await self.files.fetch(cmd.url, cap, self.hook_id)
        except FileTooLargeError:
            return self._kept("too_large", f"it is larger than {megabytes(cap)}, the most GLPI is given")
        except FetchError as exc:
            return self._kept("unreachable", f"it could not be downloaded from Chatwoot: {exc}")
        try:
            mime = (fetched.mime or "").split(";", 1)[0].strip() or None
            fields = {"name": cmd.name, "comment": cmd.marker, "entities_id": cmd.entity_id}
            posted_at = self.policy.clock()
            if before is not None:
                await before(cmd, posted_at)
            await self.files.pace(self.hook_id, fetched.size)
            try:
                document_id, result = await self.client.upload_document(
                    cmd.name, fetched.file, mime, fields, seconds=self.files.timeout
                )
            except GlpiRetryableError as exc:
                if exc.uncertain:
                    raise CreateOutcomeUnknownError(exc, posted_at) from exc
                await self._refused(cmd)
                raise
            except (GlpiRejectedError, GlpiAuthError) as exc:
                await self._refused(cmd)
                return self._kept("refused", f"GLPI refused it ({exc.code}: {exc.message})"[:300])
            if not await self._stored(document_id):
                await self.client.delete("Document", document_id, purge=True)
                said = _upload_error(result)
                why = said or "its type is not among GLPI's document types, or it is over PHP's upload limit"
                return self._kept("refused", f"GLPI did not keep the file ({why})"[:300])
            self.files.observe("to_glpi", "moved", fetched.size)
            return Resolved(document_id)
        finally:
            fetched.close()

    async def _link_files(self, cmd: LinkFiles) -> Applied:
        """Link the Documents to the followup, except those it is linked to already."""
        rows = await self.client.get_subitems("ITILFollowup", cmd.followup_id, "Document_Item")
        linked = {row.get("documents_id") for row in rows}
        added = False
        for document_id in cmd.document_ids:
            if document_id in linked:
                continue
            link = {"documents_id": document_id, "itemtype": "ITILFollowup", "items_id": cmd.followup_id}
            await self.client.create("Document_Item", link)
            added = True
        return Applied(changed=added)

    async def _run_once(self, cmd: Command, before: BeforePost | None) -> Outcome:
        match cmd:
            case EnsureUser():
                found = await self._find("User", cmd.lookups)
                if found is not None:
                    return Resolved(found, created=False)
                try:
                    return await self._create(cmd, "User", cmd.input, before)
                except GlpiRejectedError as exc:
                    if exc.message != USER_EXISTS:
                        raise
                    existing = await self._find("User", (Lookup((_login(cmd.login),), "login"),))
                    if existing is None:
                        raise
                    return Resolved(existing, created=False)
            case EnsureContact():
                found = await self._find("Contact", cmd.lookups)
                if found is not None:
                    return Resolved(found, created=False)
                return await self._create(cmd, "Contact", cmd.input, before)
            case UpdateItem():
                await self.client.update(cmd.itemtype, cmd.item_id, await self._fitted(cmd.itemtype, cmd.input))
                return Applied()
            case EnsureUserEmail():
                rows = await self.client.get_subitems("User", cmd.user_id, "UserEmail")
                if any(str(row.get("email", "")).lower() == cmd.email.lower() for row in rows):
                    return Applied(changed=False)
                await self.client.create("UserEmail", {"users_id": cmd.user_id, "email": cmd.email})
                return Applied()
            case CreateTicket():
                return await self._create(cmd, "Ticket", cmd.input, before)
            case CreateFollowup():
                try:
                    return await self._create(cmd, "ITILFollowup", cmd.input, before)
                except (GlpiRejectedError, GlpiAuthError):
                    # GLPI 10.0.12 and 11.0.8 answer a followup to a ticket that does not exist (never made, or
                    # purged) with their permission message, as they answer a ticket closed to this profile: read
                    # the ticket to tell a deleted one (the conversation goes on in a new ticket) from a refusal.
                    await self.client.get_item("Ticket", cmd.ticket_id)  # raises GlpiNotFoundError if gone
                    raise
            case CheckTicket():
                item = await self.client.get_item("Ticket", cmd.ticket_id)
                status = item.get("status")
                return TicketState(status if isinstance(status, int) else 0, bool(item.get("is_deleted")))
            case StoreFile():
                return await self._store_file(cmd, before)
            case LinkFiles():
                return await self._link_files(cmd)
            case AddRequester():
                actor: dict[str, object] = {
                    "tickets_id": cmd.ticket_id,
                    "users_id": cmd.user_id or 0,
                    "type": 1,
                    "use_notification": 1 if cmd.notify else 0,
                }
                if cmd.user_id is None:
                    actor["alternative_email"] = cmd.email or ""
                try:
                    await self.client.create("Ticket_User", actor)
                except GlpiRejectedError:
                    return Applied(changed=False)  # ["ERROR_GLPI_ADD", ""]: already the requester
                return Applied()
