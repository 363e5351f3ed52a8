"""Bodies of the operator API the console reads and writes: node, room list, room page, actions.

Declared as pydantic models so the OpenAPI document describes exactly what
the console relies on, and so operator actions are validated (names, values
and device ids the wire can carry) before anything reaches a shard.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, StringConstraints

from supervisor.rest.models import MAX_NAME_BYTES, VarName, VarValue

__all__ = [
    "ActionReply",
    "ChildInfo",
    "ClusterReply",
    "DeleteClientVariable",
    "EvictMember",
    "NodeInfo",
    "OperatorAction",
    "RoomDetail",
    "RoomList",
    "RoomSummary",
    "SetClientVariable",
    "SetGlobal",
    "ShardInfo",
]


def _valid_device_id(device_id: str) -> str:
    try:
        size = len(device_id.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (lone surrogates are not allowed)") from None
    if size > MAX_NAME_BYTES:
        # Device ids are str8 on the wire too: no client can have a longer one.
        raise ValueError(f"device id is {size} bytes in UTF-8; at most {MAX_NAME_BYTES} are possible")
    return device_id


DeviceId = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_NAME_BYTES), AfterValidator(_valid_device_id)
]


# ------------------------------------------------------------------ node view


class ChildInfo(BaseModel):
    name: str
    alive: bool
    pid: int | None
    uptimeS: float | None
    restarts: int
    lastExit: int | str | None


class ShardInfo(BaseModel):
    shard: int
    available: bool = Field(description="answered its live stats request just now")
    detail: str | None = Field(description="why not, when unavailable")
    rooms: int | None
    clients: int | None
    visible: int | None
    stealth: int | None
    objects: int | None
    messagesInPerS: float | None = Field(description="client messages received per second")
    controlOutPerS: float | None = Field(description="control unicast recipients per second")
    broadcastsPerS: float | None = Field(description="room pose/object broadcasts per second")
    ctrlQueueDepth: int | None = Field(description="control backlog (queued unicast frames)")
    ctrlQueueHighWater: int | None
    pendingBroadcasts: int | None
    drops: int | None
    restarts: int | None
    uptimeS: float | None
    statusAgeS: float | None = Field(description="age of the shard's status file")
    storeDegraded: bool | None = Field(description="null when the shard does not report it")


class NodeInfo(BaseModel):
    nodeId: str = Field(description='the node id, or "local" for a node without one')
    local: bool
    supervisorPid: int | None
    startedAt: float | None
    storeDegraded: bool | None
    ports: dict[str, int | None]
    children: list[ChildInfo]
    shards: list[ShardInfo]


class ClusterReply(BaseModel):
    operatorActions: bool = Field(
        description="the server has a token, so state-changing operator actions are possible"
    )
    nodes: list[NodeInfo]


# ------------------------------------------------------------------ rooms


class RoomSummary(BaseModel):
    roomId: str
    shard: int
    members: int
    visible: int
    stealth: int
    objects: int
    globals: int


class RoomList(BaseModel):
    total: int = Field(description="rooms matching the search on the shards that answered")
    offset: int
    limit: int
    rooms: list[RoomSummary]
    unavailableShards: list[int] = Field(description="shards that did not answer; their rooms are missing")


class MemberInfo(BaseModel):
    clientNo: int
    deviceId: str
    stealth: bool
    poseAgeS: float | None = Field(description="seconds since its last pose; null: none yet")
    lastSeenAgeS: float = Field(description="seconds since any message from it")
    controlConnected: bool
    node: str = Field(description="node holding its connection")


class VarInfo(BaseModel):
    name: str
    value: str
    lastWriterClientNo: int


class ClientVarsInfo(BaseModel):
    deviceId: str
    clientNo: int | None
    variables: list[VarInfo]


class ObjectInfo(BaseModel):
    objectId: int
    ownerClientNo: int = Field(description="0: nobody")
    poseAgeS: float | None


class RoomDetail(BaseModel):
    roomId: str
    shard: int
    members: int
    visible: int
    stealth: int
    objects: int
    globals: int
    devices: int = Field(description="devices with a client number in this room")
    emptyForS: float | None
    memberList: list[MemberInfo]
    globalVariables: list[VarInfo]
    clientVariables: list[ClientVarsInfo]
    clientVariableDevices: int
    objectList: list[ObjectInfo]


# ------------------------------------------------------------------ actions


class SetGlobal(BaseModel):
    action: Literal["set_global"]
    name: VarName
    value: VarValue


class SetClientVariable(BaseModel):
    action: Literal["set_client_variable"]
    deviceId: DeviceId
    name: VarName
    value: VarValue


class DeleteClientVariable(BaseModel):
    action: Literal["delete_client_variable"]
    deviceId: DeviceId
    name: VarName


class EvictMember(BaseModel):
    """Remove a member as a client timeout would (BEHAVIOR §6); a running
    client comes back with its next message."""

    action: Literal["evict_member"]
    deviceId: DeviceId


OperatorAction = Annotated[
    SetGlobal | SetClientVariable | DeleteClientVariable | EvictMember,
    Field(discriminator="action"),
]


class ActionReply(BaseModel):
    roomId: str
    action: str
    target: str
    result: dict[str, Any]
