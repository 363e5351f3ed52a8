"""Network variables of one room, both scopes (BEHAVIOR §10).

Global variables (keyed by name) and client variables (keyed by target
device, then name) share every rule, so the rules are written once here:

- **limits**: names and values are truncated to their character limits; a
  name must also fit a str8 on the wire (W11); a scope holds at most its limit
  of distinct names, counting names buffered but not yet applied;
- **latest-wins buffering**: live writes wait in a per-room buffer keyed by
  name (global) or (target client number, name) (client) until the flush;
- **sequence numbers**: every applied change takes the room's next write
  sequence, shared by both scopes; writing the stored value is a no-op;
- **deltas**: a flush answers with the changed globals and, per changed
  client, that client's complete set;
- **late joiners**: a full snapshot of both scopes.

Client variables are stored under the target *device*, so they outlive a
number's assignment (REST writes before the device has one) and die with the
device's mapping. Numbers are resolved through the room's
:class:`~shard_worker.numbering.ClientNumbering`. Variables of a device that
has no number yet ("queued") are bounded (W13): at most
``max_queued_devices_per_room`` such devices, each deleted once no REST write
has reached it for ``queued_client_vars_expiry_time``.

Durable changes are appended to ``changes`` as the journal's record tuples:
``global``, ``client_var`` and ``client_var_del``. This class builds payloads;
who receives them is the room's business.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from relay.protocol import encode
from relay.protocol.messages import ClientVars, ClientVarSync, GlobalVarSync, VarEntry
from shard_worker.numbering import ClientNumbering
from shard_worker.room_settings import RoomCounters, RoomSettings, limited_log

log = logging.getLogger(__name__)

__all__ = [
    "MAX_STR8_BYTES",
    "NetworkVariables",
    "NvLimitError",
    "RestValidationError",
    "Var",
    "name_fits_wire",
    "truncate_text",
]


MAX_STR8_BYTES = 255


@dataclass(slots=True)
class Var:
    value: str
    last_writer: int
    seq: int


class NvLimitError(ValueError):
    """A REST write that the limits refuse as a whole (outcome ``limit_exceeded``)."""


class RestValidationError(ValueError):
    """A REST write with a name or value the wire cannot carry (outcome ``invalid``)."""


def truncate_text(text: str, max_chars: int) -> str:
    """The reference's rule: limits count code points, not bytes."""
    return text[:max_chars]


def name_fits_wire(name: str) -> bool:
    """A name must also fit a str8, or every later sync of the room breaks (W11)."""
    return len(name.encode("utf-8")) <= MAX_STR8_BYTES


class NetworkVariables:
    def __init__(
        self,
        room_id: str,
        settings: RoomSettings,
        numbering: ClientNumbering,
        changes: list[tuple],
        counters: RoomCounters,
        now: float,
    ) -> None:
        self.room_id = room_id
        self.settings = settings
        self.numbering = numbering
        self.changes = changes
        self.counters = counters
        self.globals: dict[str, Var] = {}
        # device id -> name -> variable
        self.client_vars: dict[str, dict[str, Var]] = {}
        self.write_seq = 0
        # name -> (value, writer client number); dict order = first-write order
        self.pending_globals: dict[str, tuple[str, int]] = {}
        # (target client number, name) -> (value, writer client number)
        self.pending_client: dict[tuple[int, str], tuple[str, int]] = {}
        self.pending_since: float | None = None
        # device id -> time of the last REST write, for devices with client
        # variables but no number yet (queued until they join)
        self.queued_since: dict[str, float] = {}
        self.last_flush_wait: float | None = None
        self.last_flush = -1e18
        self._window_start = now
        self._window_count = 0
        self._warned = False

    # --------------------------------------------------------------- limits

    def _clean(self, name: str, value: str) -> tuple[str, str] | None:
        """Apply the length limits to a live write; None = write ignored."""
        name = truncate_text(name, self.settings.max_var_name_length)
        value = truncate_text(value, self.settings.max_var_value_length)
        if not name:
            return None  # silently, as the reference does
        if not name_fits_wire(name):
            self.counters.nv_writes_refused += 1
            limited_log.warning("nv_name_too_long", "room %r: variable name over 255 UTF-8 bytes refused", self.room_id)
            return None
        return name, value

    @staticmethod
    def _names(stored: dict[str, Var], pending_names: Iterable[str]) -> set[str]:
        """A scope's names: stored ones and buffered ones (they will be stored)."""
        return stored.keys() | set(pending_names)

    def _pending_client_names(self, client_no: int) -> set[str]:
        return {name for (no, name) in self.pending_client if no == client_no}

    def check_rest_variables(self, variables: dict[str, str]) -> None:
        """REST refuses what a live write would truncate (outcome ``invalid``, BEHAVIOR §12)."""
        for name, value in variables.items():
            if not isinstance(name, str) or not isinstance(value, str):
                raise RestValidationError("names and values must be strings")
            if not name or len(name) > self.settings.max_var_name_length or not name_fits_wire(name):
                raise RestValidationError(
                    f"variable name must be 1-{self.settings.max_var_name_length} characters"
                    f" and at most {MAX_STR8_BYTES} UTF-8 bytes: {name[:80]!r}"
                )
            if len(value) > self.settings.max_var_value_length:
                raise RestValidationError(
                    f"value of {name!r} exceeds {self.settings.max_var_value_length} characters"
                )

    def _count_write(self, now: float) -> None:
        """Rate monitor: warn once per window above the threshold (never throttles)."""
        if now - self._window_start >= self.settings.nv_monitor_window_size:
            self._window_start = now
            self._window_count = 0
            self._warned = False
        self._window_count += 1
        if self._window_count > self.settings.nv_monitor_threshold and not self._warned:
            self._warned = True
            # Already at most once per window per room: not a per-message line.
            log.warning(
                "room %r: %d NV writes within %.1fs (threshold %d)",
                self.room_id,
                self._window_count,
                self.settings.nv_monitor_window_size,
                self.settings.nv_monitor_threshold,
            )

    def _buffered(self, now: float) -> None:
        self._count_write(now)
        if self.pending_since is None:
            self.pending_since = now

    # ----------------------------------------------------------- live writes

    def buffer_global(self, name: str, value: str, writer: int, now: float) -> bool:
        """Buffer a live GLOBAL_VAR_SET; False if refused or ignored."""
        cleaned = self._clean(name, value)
        if cleaned is None:
            return False
        name, value = cleaned
        if (
            name not in self.globals
            and name not in self.pending_globals
            and len(self._names(self.globals, self.pending_globals)) >= self.settings.max_global_vars
        ):
            self.counters.nv_writes_refused += 1
            limited_log.warning("nv_global_limit", "room %r: global variable limit reached, %r refused", self.room_id, name)
            return False
        self._buffered(now)
        self.pending_globals[name] = (value, writer)
        return True

    def buffer_client(self, target_client_no: int, name: str, value: str, writer: int, now: float) -> bool:
        """Buffer a live CLIENT_VAR_SET; False if refused or ignored."""
        cleaned = self._clean(name, value)
        if cleaned is None:
            return False
        name, value = cleaned
        target_device = self.numbering.device_of(target_client_no)
        if target_device is None:
            self.counters.nv_writes_refused += 1
            limited_log.warning("nv_unmapped_target", "room %r: client variable for unmapped client %d", self.room_id, target_client_no)
            return False
        stored = self.client_vars.get(target_device, {})
        if (
            name not in stored
            and (target_client_no, name) not in self.pending_client
            and len(self._names(stored, self._pending_client_names(target_client_no)))
            >= self.settings.max_client_vars
        ):
            self.counters.nv_writes_refused += 1
            limited_log.warning("nv_client_limit", "room %r: client variable limit reached for %d", self.room_id, target_client_no)
            return False
        self._buffered(now)
        self.pending_client[(target_client_no, name)] = (value, writer)
        return True

    # ---------------------------------------------------------------- flush

    def flush_due(self, now: float) -> bool:
        return bool(self.pending_globals or self.pending_client) and (
            now - self.last_flush >= self.settings.nv_flush_interval
        )

    def next_flush_at(self) -> float | None:
        if not (self.pending_globals or self.pending_client):
            return None
        return self.last_flush + self.settings.nv_flush_interval

    def flush(self, now: float) -> list[bytes]:
        """Apply buffered writes, globals first; returns the delta syncs (BEHAVIOR §10.2)."""
        self.last_flush = now
        # How long the oldest buffered write waited: the NV set -> sync latency.
        self.last_flush_wait = None if self.pending_since is None else now - self.pending_since
        self.pending_since = None
        changed_globals: list[VarEntry] = []
        for name, (value, writer) in self.pending_globals.items():
            if self._apply_global(name, value, writer):
                changed_globals.append(VarEntry(name, value, writer))
        self.pending_globals.clear()
        changed_clients: dict[int, None] = {}
        for (target_no, name), (value, writer) in self.pending_client.items():
            device_id = self.numbering.device_of(target_no)
            if device_id is not None and self._apply_client_var(device_id, name, value, writer):
                changed_clients[target_no] = None
        self.pending_client.clear()
        payloads: list[bytes] = []
        if changed_globals:
            payloads.append(self.global_sync_payload(changed_globals))
        if changed_clients:
            payloads.append(self.client_sync_payload(changed_clients))
        return payloads

    def _apply_global(self, name: str, value: str, writer: int) -> bool:
        current = self.globals.get(name)
        if current is not None and current.value == value:
            return False
        self.write_seq += 1
        self.globals[name] = Var(value, writer, self.write_seq)
        self.counters.nv_writes_applied += 1
        self.changes.append(("global", self.room_id, name, value, writer, self.write_seq))
        return True

    def _apply_client_var(self, device_id: str, name: str, value: str, writer: int) -> bool:
        stored = self.client_vars.setdefault(device_id, {})
        current = stored.get(name)
        if current is not None and current.value == value:
            return False
        self.write_seq += 1
        stored[name] = Var(value, writer, self.write_seq)
        self.counters.nv_writes_applied += 1
        self.changes.append(("client_var", self.room_id, device_id, name, value, writer, self.write_seq))
        return True

    # ------------------------------------------------------------- payloads

    @staticmethod
    def _entries(variables: dict[str, Var]) -> tuple[VarEntry, ...]:
        return tuple(VarEntry(name, var.value, var.last_writer) for name, var in variables.items())

    def global_sync_payload(self, entries: Iterable[VarEntry]) -> bytes:
        return encode(GlobalVarSync(tuple(entries)))

    def client_sync_payload(self, client_nos: Iterable[int]) -> bytes:
        """Each listed client's complete variable set (receivers replace, not merge)."""
        numbers = self.numbering.numbers
        clients = tuple(
            ClientVars(no, self._entries(self.client_vars.get(numbers[no], {}))) for no in client_nos
        )
        return encode(ClientVarSync(clients))

    def full_sync_payloads(self) -> list[bytes]:
        """Late-joiner snapshot: every global (if any), then every mapped client,
        departed-but-unexpired ones included, with empty sets where they have none."""
        payloads = []
        if self.globals:
            payloads.append(encode(GlobalVarSync(self._entries(self.globals))))
        clients = tuple(
            ClientVars(client_no, self._entries(self.client_vars.get(device_id, {})))
            for client_no, device_id in self.numbering.numbers.items()
        )
        if clients:
            payloads.append(encode(ClientVarSync(clients)))
        return payloads

    # ---------------------------------------------------------------- delete

    def delete_client_vars(self, device_id: str, client_no: int | None, name: str | None) -> int:
        """Delete one (``name``) or all of a device's variables and the buffered
        writes to them; returns how many stored variables went."""
        stored = self.client_vars.get(device_id)
        removed = 0
        if stored:
            if name is None:
                removed = len(stored)
                del self.client_vars[device_id]
            elif name in stored:
                del stored[name]
                removed = 1
        if client_no is not None:
            for key in [k for k in self.pending_client if k[0] == client_no and (name is None or k[1] == name)]:
                del self.pending_client[key]
        if removed:
            self.changes.append(("client_var_del", self.room_id, device_id, name))
        if device_id in self.queued_since and not self.client_vars.get(device_id):
            del self.queued_since[device_id]
        return removed

    def clear_client(self, device_id: str, client_no: int) -> bytes:
        """CLIENT_VAR_CLEAR: everything of the sender goes; the sync is sent even
        if it had nothing (BEHAVIOR §10.3)."""
        self.delete_client_vars(device_id, client_no, None)
        return encode(ClientVarSync((ClientVars(client_no, ()),)))

    def forget_device(self, device_id: str, client_no: int) -> None:
        """The device's mapping expired: its variables and buffered writes die with
        it (journalled by the mapping's ``device_expire`` record)."""
        self.client_vars.pop(device_id, None)
        for key in [k for k in self.pending_client if k[0] == client_no]:
            del self.pending_client[key]

    # ------------------------------------------------------------------ REST

    def rest_set_client_vars(
        self, device_id: str, client_no: int | None, variables: dict[str, str], now: float = 0.0
    ) -> bool:
        """Apply REST client writes at once (writer 0); True if anything changed.

        Raises :class:`RestValidationError` or, if the names would exceed the
        limit, or the device has no number and the room already holds
        variables for ``max_queued_devices_per_room`` such devices,
        :class:`NvLimitError` before applying anything.
        """
        self.check_rest_variables(variables)
        pending = self._pending_client_names(client_no) if client_no is not None else set()
        names = self._names(self.client_vars.get(device_id, {}), pending) | set(variables)
        if len(names) > self.settings.max_client_vars:
            raise NvLimitError(
                f"Too many client variables (> {self.settings.max_client_vars}) for device {device_id}"
            )
        if client_no is None:
            limit = self.settings.max_queued_devices_per_room
            if device_id not in self.queued_since and len(self.queued_since) >= limit:
                self.counters.queued_devices_refused += 1
                limited_log.warning(
                    "queued_devices_limit", "room %r: %d devices already have queued client variables",
                    self.room_id, limit,
                )
                raise NvLimitError(
                    f"Too many devices with queued client variables (> {limit}) in room {self.room_id}"
                )
        changed = False
        for name, value in variables.items():
            if client_no is not None:
                # Arrival order decides: this write supersedes buffered live writes.
                self.pending_client.pop((client_no, name), None)
            changed |= self._apply_client_var(device_id, name, value, 0)
        if client_no is None and self.client_vars.get(device_id):
            self.queued_since[device_id] = now  # the expiry clock restarts
        return changed

    def device_mapped(self, device_id: str) -> None:
        """The device got a number: its variables are no longer queued."""
        self.queued_since.pop(device_id, None)

    def track_queued(self, now: float) -> None:
        """After a reload: devices with variables and no number are queued from ``now``."""
        devices = self.numbering.devices
        for device_id in self.client_vars:
            if device_id not in devices:
                self.queued_since.setdefault(device_id, now)

    def expire_queued(self, now: float) -> int:
        """Delete the variables of unnumbered devices no REST write reached for
        ``queued_client_vars_expiry_time``; returns how many devices went."""
        expiry = self.settings.queued_client_vars_expiry_time
        gone = [d for d, at in self.queued_since.items() if now - at > expiry]
        for device_id in gone:
            self.delete_client_vars(device_id, None, None)
            self.queued_since.pop(device_id, None)
        self.counters.queued_devices_expired += len(gone)
        return len(gone)

    def rest_set_globals(self, variables: dict[str, str]) -> list[VarEntry]:
        """Apply REST global writes at once (writer 0); returns the changed ones.

        Raises like :meth:`rest_set_client_vars`.
        """
        self.check_rest_variables(variables)
        names = self._names(self.globals, self.pending_globals) | set(variables)
        if len(names) > self.settings.max_global_vars:
            raise NvLimitError(f"Too many global variables (> {self.settings.max_global_vars}) for room")
        changed: list[VarEntry] = []
        for name, value in variables.items():
            # Arrival order decides: this write supersedes buffered live writes.
            self.pending_globals.pop(name, None)
            if self._apply_global(name, value, 0):
                changed.append(VarEntry(name, value, 0))
        return changed

    def client_values(self, device_id: str) -> dict[str, str]:
        return {name: var.value for name, var in self.client_vars.get(device_id, {}).items()}

    def global_values(self) -> dict[str, str]:
        return {name: var.value for name, var in self.globals.items()}

    # --------------------------------------------------------------- restore

    def restore(
        self,
        write_seq: int,
        globals_: dict[str, tuple[str, int, int]],
        client_vars: dict[str, dict[str, tuple[str, int, int]]],
    ) -> None:
        """Reload journalled variables; the write sequence continues from ``write_seq``."""
        self.write_seq = write_seq
        for name, (value, writer, seq) in globals_.items():
            self.globals[name] = Var(value, writer, seq)
        for device_id, variables in client_vars.items():
            self.client_vars[device_id] = {
                name: Var(value, writer, seq) for name, (value, writer, seq) in variables.items()
            }
