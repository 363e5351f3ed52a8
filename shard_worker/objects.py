"""Shared objects of one room and who owns them (BEHAVIOR §11).

An object is ``objectId -> {owner (0 = none), pose bytes, poseSeq, poseTime}``
and lives until its room is deleted. The rules, all here: a request is always
granted (take-over included); only the owner may release, anyone else gets a
rejection; an object pose from the owner is stored verbatim, one for an
unknown object claims it, one from anybody else is ignored; objects of a
member that left are released; a room holds at most ``max_objects_per_room``
objects (W13). Room-objects broadcasts list only objects that have a pose.

Who may act at all (membership) and who receives the resulting messages is
the room's business: methods take client numbers and return payloads.
Ownership changes are appended to ``changes`` as the journal's ``object``
record.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from relay.protocol import encode
from relay.protocol.fastpath import assemble_room_objects
from relay.protocol.messages import (
    OWNERSHIP_OP_RELEASE,
    OWNERSHIP_OP_REQUEST,
    OWNERSHIP_REJECT_NOT_OWNER,
    OwnershipChanged,
    OwnershipRejected,
)
from shard_worker.room_settings import RoomCounters, RoomSettings, limited_log

__all__ = ["ObjectTable", "RoomObject"]



@dataclass(slots=True)
class RoomObject:
    owner: int = 0
    pose_bytes: bytes | None = None
    pose_seq: int = 0
    pose_time: float = 0.0


class ObjectTable:
    def __init__(
        self, room_id: str, settings: RoomSettings, changes: list[tuple], counters: RoomCounters
    ) -> None:
        self.room_id = room_id
        self.settings = settings
        self.changes = changes
        self.counters = counters
        self.objects: dict[int, RoomObject] = {}
        self.dirty = False
        self.last_broadcast = -1e18
        # Objects whose pose changed since it was last journaled: written at
        # most once per objects broadcast, never once per pose message.
        self._unsaved_poses: set[int] = set()

    @property
    def has_unsaved_poses(self) -> bool:
        """Poses received but not journalled yet (written with the next broadcast)."""
        return bool(self._unsaved_poses)

    def _new_object(self, object_id: int) -> RoomObject | None:
        if len(self.objects) >= self.settings.max_objects_per_room:
            self.counters.objects_refused += 1
            limited_log.warning("object_limit", "room %r: object limit (%d) reached", self.room_id, self.settings.max_objects_per_room)
            return None
        obj = self.objects[object_id] = RoomObject()
        return obj

    def _set_owner(self, object_id: int, obj: RoomObject, new_owner: int) -> bytes:
        """Change the owner; returns the OWNERSHIP_CHANGED for the room."""
        previous = obj.owner
        obj.owner = new_owner
        self.changes.append(("object", self.room_id, object_id, new_owner))
        if obj.pose_bytes is not None:
            self.dirty = True
        return encode(OwnershipChanged(object_id, new_owner, previous))

    def ownership_request(
        self, operation: int, object_id: int, requester: int
    ) -> tuple[bytes | None, bytes | None]:
        """OWNERSHIP_REQUEST of client ``requester`` (object id already non-zero).

        Returns ``(to_room, to_requester)``: an OWNERSHIP_CHANGED for the room
        or an OWNERSHIP_REJECTED for the requester alone, or neither.
        """
        obj = self.objects.get(object_id)
        if obj is None:
            obj = self._new_object(object_id)
            if obj is None:
                return None, None
            self.changes.append(("object", self.room_id, object_id, 0))
        if operation == OWNERSHIP_OP_REQUEST:
            return self._set_owner(object_id, obj, requester), None
        if operation == OWNERSHIP_OP_RELEASE:
            if obj.owner == requester:
                return self._set_owner(object_id, obj, 0), None
            return None, encode(OwnershipRejected(object_id, obj.owner, OWNERSHIP_REJECT_NOT_OWNER))
        return None, None

    def pose(self, object_id: int, sender: int, pose_seq: int, pose_bytes: bytes, now: float) -> bytes | None:
        """OBJECT_POSE of client ``sender``; returns an OWNERSHIP_CHANGED for the
        room when the pose claimed an unknown object."""
        claimed = None
        obj = self.objects.get(object_id)
        if obj is None:
            obj = self._new_object(object_id)
            if obj is None:
                return None
            claimed = self._set_owner(object_id, obj, sender)
        elif obj.owner != sender:
            return None
        obj.pose_bytes = pose_bytes
        obj.pose_seq = pose_seq
        obj.pose_time = now
        self.dirty = True
        self._unsaved_poses.add(object_id)
        return claimed

    def release_all(self, owner: int) -> list[bytes]:
        """The owner left: each of its objects becomes unowned (poses kept)."""
        return [
            self._set_owner(object_id, obj, 0)
            for object_id, obj in self.objects.items()
            if obj.owner == owner
        ]

    def snapshot_payloads(self) -> list[bytes]:
        """What a joiner is told: one OWNERSHIP_CHANGED(id, owner, 0) per object."""
        return [encode(OwnershipChanged(object_id, obj.owner, 0)) for object_id, obj in self.objects.items()]

    def broadcast_due(self, now: float) -> bool:
        if not self.objects:
            return False
        since = now - self.last_broadcast
        if self.dirty and since >= self.settings.broadcast_gap_min:
            return True
        return since >= self.settings.object_idle_broadcast_interval

    def build_broadcast(self, now: float) -> bytes | None:
        """MSG_ROOM_OBJECTS of every object with a pose, or None if none has one."""
        self.dirty = False
        self.last_broadcast = now
        for object_id in self._unsaved_poses:
            obj = self.objects.get(object_id)
            if obj is not None and obj.pose_bytes is not None:
                self.changes.append(("object_pose", self.room_id, object_id, obj.pose_bytes, obj.pose_seq))
        self._unsaved_poses.clear()
        posed = [
            (object_id, obj.owner, obj.pose_seq, obj.pose_time, obj.pose_bytes)
            for object_id, obj in self.objects.items()
            if obj.pose_bytes is not None
        ]
        if not posed:
            return None
        return assemble_room_objects(now, posed)

    def restore(
        self, owners: Mapping[int, int], poses: Mapping[int, tuple[bytes, int]], now: float
    ) -> None:
        """Reload journalled ownership and last poses (what late joiners are sent)."""
        for object_id, owner in owners.items():
            self.objects[object_id] = RoomObject(owner=owner)
        for object_id, (pose_bytes, pose_seq) in poses.items():
            obj = self.objects.setdefault(object_id, RoomObject())
            obj.pose_bytes, obj.pose_seq, obj.pose_time = pose_bytes, pose_seq, now
            self.dirty = True
