"""What every part of a room is configured with, and what rooms count.

Kept apart from ``room.py`` so that the room's parts (client numbering,
network variables, objects) can depend on it without depending on ``Room``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from relay.config import RelayConfig
from relay.logs import RateLimitedLog

# One rate-limited log for every room rule of a shard (numbering, variables,
# objects): a client repeating a refused message costs a line per reason per
# interval, with a count, never a line per message.
limited_log = RateLimitedLog(logging.getLogger("shard_worker.room"))

__all__ = ["RoomCounters", "RoomSettings"]

_DEFAULTS = RelayConfig()


@dataclass(frozen=True, slots=True)
class RoomSettings:
    """The subset of the relay configuration that room semantics depend on.

    Defaults are the relay's (one source of truth in ``RelayConfig``); tests
    override single fields.
    """

    client_timeout: float = _DEFAULTS.client_timeout
    device_id_expiry_time: float = _DEFAULTS.device_id_expiry_time
    empty_room_expiry_time: float = _DEFAULTS.empty_room_expiry_time
    transform_broadcast_rate: float = _DEFAULTS.transform_broadcast_rate
    idle_broadcast_interval: float = _DEFAULTS.idle_broadcast_interval
    object_idle_broadcast_interval: float = _DEFAULTS.object_idle_broadcast_interval
    nv_flush_interval: float = _DEFAULTS.nv_flush_interval
    mapping_throttle_interval: float = _DEFAULTS.mapping_throttle_interval
    max_global_vars: int = _DEFAULTS.max_global_vars
    max_client_vars: int = _DEFAULTS.max_client_vars
    max_var_name_length: int = _DEFAULTS.max_var_name_length
    max_var_value_length: int = _DEFAULTS.max_var_value_length
    nv_monitor_window_size: float = _DEFAULTS.nv_monitor_window_size
    nv_monitor_threshold: int = _DEFAULTS.nv_monitor_threshold
    max_objects_per_room: int = _DEFAULTS.max_objects_per_room
    max_clients_per_room: int = _DEFAULTS.max_clients_per_room
    guard_device_takeover: bool = _DEFAULTS.guard_device_takeover
    max_queued_devices_per_room: int = _DEFAULTS.max_queued_devices_per_room
    queued_client_vars_expiry_time: float = _DEFAULTS.queued_client_vars_expiry_time
    server_version: tuple[int, int, int] = _DEFAULTS.server_version_tuple

    @classmethod
    def from_config(cls, config: RelayConfig) -> RoomSettings:
        values = {name: getattr(config, name) for name in cls.__dataclass_fields__ if name != "server_version"}
        return cls(server_version=config.server_version_tuple, **values)

    @property
    def broadcast_period(self) -> float:
        """Gap between two broadcasts of one room (BEHAVIOR §8, §11)."""
        return 1.0 / self.transform_broadcast_rate

    @property
    def broadcast_gap_min(self) -> float:
        """How soon after its last broadcast a dirty room may broadcast again.

        The shard's tick paces broadcasts (one per period, on the wall-clock
        grid, relay/tick_grid.py); a tick may come a little early or late
        (timer wake-ups, a broadcast held for late poses), so a room checks
        only that it is not ahead by half a period, never a hair-exact period
        that a tick slightly early would miss for a whole period."""
        return 0.5 / self.transform_broadcast_rate


@dataclass(slots=True)
class RoomCounters:
    """Refusals and work done by rooms; one instance is shared by a shard's
    rooms so the totals stay monotonic when a room expires."""

    nv_writes_refused: int = 0
    nv_writes_applied: int = 0
    rpc_fanout: int = 0
    object_poses_refused: int = 0
    objects_refused: int = 0
    # REST client variables for one more not-yet-joined device refused (limit),
    # and such devices whose variables expired unclaimed.
    queued_devices_refused: int = 0
    queued_devices_expired: int = 0
