"""Bounded room state and admission control in one shard (issue #15, W13/W14).

ShardState in-process with the real codec and, where rooms leave memory, a
real SQLite store: empty rooms are evicted from memory and reload lazily,
their expiry clocks survive the stay out of memory, REST-queued client
variables are bounded, and the optional admission limits (clients per room,
control rate per connection, device take-over guard) refuse and count.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from relay.protocol import encode
from relay.protocol.messages import (
    OWNERSHIP_OP_REQUEST,
    PROTOCOL_VERSION,
    ClientVarClear,
    ClientVars,
    ClientVarSync,
    DeviceIdMapping,
    GlobalVarSync,
    OwnershipChanged,
    OwnershipRequest,
    Rpc,
    VarEntry,
)
from shard_worker.room import RoomSettings
from shard_worker.shard import ShardState
from shard_worker.store.sqlite_store import SqliteRoomStore
from tests.test_shard_state import CTRL, XFM, gset, hello, of_type, out_msgs, pose

pytestmark = pytest.mark.timeout(60)


def state_with(store: SqliteRoomStore | None = None, now: float = 0.0, shard: dict | None = None,
               **settings: object) -> ShardState:
    return ShardState(RoomSettings(**settings), store=store, now=now, **(shard or {}))  # type: ignore[arg-type]


def run(state: ShardState, store: SqliteRoomStore | None, until: float, start: float, step: float = 1.0,
        keep: tuple[tuple[bytes, bytes, bytes], ...] = ()) -> None:
    """Tick (and journal, as the worker does) from ``start`` to ``until``;
    ``keep`` = (identity, room, device) hellos sent every step."""
    now = start
    while now <= until + 1e-9:
        for identity, room, device in keep:
            state.handle(CTRL, identity, room, hello(device.decode()), now)
        state.tick(now)
        journal(state, store)
        now += step


def journal(state: ShardState, store: SqliteRoomStore | None) -> None:
    changes = state.drain_changes()
    if store is not None and changes:
        store.apply(changes)
    state.take_released()


def number_in(out: list, device: str) -> int | None:
    for _, _, msg in out_msgs(out):
        if isinstance(msg, DeviceIdMapping):
            for entry in msg.mappings:
                if entry.device_id == device:
                    return entry.client_no
    return None


def client_no(state: ShardState, room: str, device: str, now: float) -> int | None:
    reply, _ = state.admin({"op": "client_vars_get", "room": room, "device": device}, now)
    return reply["body"]["clientNo"]


# ------------------------------------------------------ rooms leave memory


@pytest.mark.parametrize("with_store", [True, False], ids=["sqlite", "no-store"])
def test_a_hello_flood_with_random_room_ids_never_locks_out_a_new_room(tmp_path: Path, with_store: bool) -> None:
    store = SqliteRoomStore(str(tmp_path / "shard.db")) if with_store else None
    try:
        state = state_with(store, shard={"max_rooms": 500})
        rng = random.Random(15)
        refused_early = 0
        # 20 000 hellos, each for a new random room, over 10 s (2 000/s).
        for tick in range(100):
            now = tick * 0.1
            for _ in range(200):
                room = f"flood-{rng.getrandbits(64):016x}".encode()
                state.handle(CTRL, b"f", room, hello("bot"), now)
            state.tick(now)
            journal(state, store)
            assert len(state.rooms) <= 500
            if now < 5.0:
                refused_early = state.drops.counts["room_limit"]
        # The cap holds rooms *with members*: the first 500 rooms filled it,
        # and once their members had timed out (client_timeout 5 s) further
        # flood rooms were admitted in place of the empty ones.
        assert refused_early == 10_000 - 500
        assert state.drops.counts["room_limit"] <= 20_000 - 2 * 500
        evicted = state.bounds["rooms_evicted_at_cap"] if with_store else state.bounds["rooms_dropped_at_cap"]
        assert evicted > 0
        run(state, store, until=20.0, start=10.0)

        out = state.handle(CTRL, b"l", b"legit-room", hello("legit"), 20.5)

        assert number_in(out, "legit") == 1
        assert len(state.rooms) <= 500
        if store is not None:
            # Evicted flood rooms kept their state in the store.
            journal(state, store)
            assert len(store.room_ids()) > 500
            assert state.stats()["evicted_rooms"] == len(state.evicted) > 0
    finally:
        if store is not None:
            store.close()


def _used_room(state: ShardState, store: SqliteRoomStore) -> None:
    state.handle(CTRL, b"a", b"r", hello("A"), 0.0)
    state.handle(CTRL, b"b", b"r", hello("B"), 0.0)
    state.handle(CTRL, b"a", b"r", gset("A", "g", "v"), 0.0)
    state.handle(CTRL, b"a", b"r", encode(OwnershipRequest(PROTOCOL_VERSION, "A", OWNERSHIP_OP_REQUEST, 3)), 0.0)
    state.admin({"op": "client_vars_set", "room": "r", "device": "B", "variables": {"hp": "7"}}, 0.0)
    run(state, store, until=0.1, start=0.1, step=0.1)  # flush the NV write


def test_an_idle_empty_room_leaves_memory_and_reloads_with_its_state(tmp_path: Path) -> None:
    with SqliteRoomStore(str(tmp_path / "shard.db")) as store:
        state = state_with(store, shard={"room_idle_evict": 10.0})
        _used_room(state, store)
        run(state, store, until=15.0, start=1.0)
        assert "r" in state.rooms  # empty since ~6 s: not idle for 10 s yet
        run(state, store, until=17.0, start=16.0)
        assert "r" not in state.rooms and "r" in state.evicted
        assert state.bounds["rooms_evicted_idle"] == 1
        assert state.stats()["rooms"] == 0

        out = state.handle(CTRL, b"c", b"r", hello("C"), 30.0)

        to_c = [msg for _, ids, msg in out_msgs(out) if ids == frozenset({b"c"})]
        assert isinstance(to_c[0], DeviceIdMapping)
        assert [(e.device_id, e.client_no) for e in to_c[0].mappings] == [("C", 3)]
        assert GlobalVarSync((VarEntry("g", "v", 1),)) in to_c
        assert ClientVarSync((ClientVars(1, ()), ClientVars(2, (VarEntry("hp", "7", 0),)), ClientVars(3, ()))) in to_c
        assert OwnershipChanged(3, 0, 0) in to_c  # released when A timed out
        assert number_in(state.handle(CTRL, b"a2", b"r", hello("A"), 30.1), "A") == 1
        assert state.bounds["rooms_reloaded"] == 1 and "r" not in state.evicted


def test_an_evicted_room_still_expires_on_time_even_if_read_meanwhile(tmp_path: Path) -> None:
    with SqliteRoomStore(str(tmp_path / "shard.db")) as store:
        state = state_with(store, shard={"room_idle_evict": 10.0}, empty_room_expiry_time=100.0)
        state.handle(CTRL, b"a", b"r", hello("A"), 0.0)
        state.handle(CTRL, b"a", b"r", gset("A", "g", "v"), 0.0)
        run(state, store, until=20.0, start=1.0)
        assert "r" in state.evicted  # empty since 6 s, evicted at 16 s
        # A REST read at 50 s reloads it; being read is not being used.
        assert state.admin({"op": "globals_get", "room": "r"}, 50.0)[0]["body"] == {"variables": {"g": "v"}}
        assert "r" in state.rooms
        run(state, store, until=104.0, start=51.0)
        assert "r" in state.evicted and store.load_room("r") is not None  # empty for < 100 s

        run(state, store, until=110.0, start=105.0)

        assert "r" not in state.evicted and "r" not in state.rooms
        assert store.load_room("r") is None
        assert state.rooms_expired == 1 and state.bounds["evicted_rooms_expired"] == 1
        # Re-created from scratch: numbers from 1 again, no variables.
        assert number_in(state.handle(CTRL, b"b", b"r", hello("B"), 111.0), "B") == 1
        assert state.admin({"op": "globals_get", "room": "r"}, 111.0)[0]["body"] == {"variables": {}}


def test_a_stay_out_of_memory_never_extends_a_device_mapping(tmp_path: Path) -> None:
    with SqliteRoomStore(str(tmp_path / "shard.db")) as store:
        state = state_with(store, shard={"room_idle_evict": 5.0, "device_sweep_interval": 1.0},
                           device_id_expiry_time=100.0)
        state.handle(CTRL, b"a", b"r", hello("A"), 0.0)
        state.handle(CTRL, b"b", b"r", hello("B"), 0.0)
        run(state, store, until=50.0, start=1.0, keep=((b"b", b"r", b"B"),))
        run(state, store, until=70.0, start=51.0)
        assert "r" in state.evicted  # B timed out at ~56 s, evicted at ~62 s

        state.handle(CTRL, b"c", b"r", hello("C"), 120.0)  # reload
        run(state, store, until=122.0, start=121.0, keep=((b"c", b"r", b"C"),))

        # A unseen since 0 s (> 100 s): gone; B unseen since 50 s: kept.
        assert client_no(state, "r", "A", 122.0) is None
        assert client_no(state, "r", "B", 122.0) == 2
        stored = store.load_room("r")
        assert stored is not None and "A" not in stored.devices and "B" in stored.devices


def test_the_cap_refuses_while_every_room_has_members_and_evicts_an_empty_one_for_a_new_room(tmp_path: Path) -> None:
    with SqliteRoomStore(str(tmp_path / "shard.db")) as store:
        state = state_with(store, shard={"max_rooms": 2, "room_idle_evict": 0.0})
        state.handle(CTRL, b"a", b"busy-1", hello("A"), 0.0)
        state.handle(CTRL, b"b", b"busy-2", hello("B"), 0.0)
        run(state, store, until=3.0, start=1.0, keep=((b"a", b"busy-1", b"A"), (b"b", b"busy-2", b"B")))
        assert state.handle(CTRL, b"c", b"new", hello("C"), 3.5) == []
        assert state.drops.counts["room_limit"] == 1
        # room_idle_evict 0: an empty room stays in memory until a new room needs the slot.
        run(state, store, until=20.0, start=4.0, keep=((b"b", b"busy-2", b"B"),))
        assert set(state.rooms) == {"busy-1", "busy-2"}
        assert number_in(state.handle(CTRL, b"c", b"new", hello("C"), 20.5), "C") == 1
        assert set(state.rooms) == {"busy-2", "new"} and state.bounds["rooms_evicted_at_cap"] == 1


def test_the_evicted_index_is_bounded_and_counts_what_it_forgets(tmp_path: Path) -> None:
    with SqliteRoomStore(str(tmp_path / "shard.db")) as store:
        state = state_with(store, shard={"room_idle_evict": 1.0, "max_evicted_rooms": 3})
        for i in range(5):
            state.handle(CTRL, b"x", f"r{i}".encode(), hello("X"), 0.0)
        run(state, store, until=10.0, start=1.0)
        assert list(state.evicted) == ["r2", "r3", "r4"]
        assert state.bounds["evicted_index_overflow"] == 2
        assert len(store.room_ids()) == 5  # forgotten rooms keep their stored state


def test_a_room_is_idle_only_without_members_and_with_nothing_pending() -> None:
    from shard_worker.room import Room

    room = Room("r", RoomSettings(), 0.0)
    assert room.idle()
    room.on_hello(b"a", "A", False, 0.0)
    room.on_global_var_set(b"a", "A", "g", "v", 0.0)
    room.on_object_pose("A", 9, 1, bytes(13), 0.0)
    room.remove_member("A")
    assert not room.idle()  # a buffered NV write
    room.flush_nv(0.1)
    assert not room.idle()  # an object pose not journalled, an objects broadcast due
    room.build_room_objects(0.2)
    assert room.idle()


# ------------------------------------------------- REST-queued variables


def test_rest_queued_client_variables_are_bounded_per_room_and_expire(tmp_path: Path) -> None:
    store = SqliteRoomStore(str(tmp_path / "shard.db"))
    state = state_with(store, shard={"device_sweep_interval": 1.0, "room_idle_evict": 0.0},
                       max_queued_devices_per_room=2, queued_client_vars_expiry_time=100.0)
    state.handle(CTRL, b"a", b"r", hello("A"), 0.0)

    def post(device: str, now: float) -> str:
        reply, _ = state.admin({"op": "client_vars_set", "room": "r", "device": device, "variables": {"k": device}}, now)
        return reply["outcome"]

    assert [post("N1", 0.0), post("N2", 10.0), post("N3", 10.0)] == ["ok", "ok", "limit_exceeded"]
    assert post("N1", 20.0) == "ok"  # already queued: an update, and its clock restarts
    assert state.stats()["room_counters"]["queued_devices_refused"] == 1
    run(state, store, until=115.0, start=1.0, keep=((b"a", b"r", b"A"),))
    # N2 last written at 10 s: deleted past 110 s, here and in the store; N1 (20 s) not yet.
    assert state.admin({"op": "client_vars_get", "room": "r", "device": "N2"}, 115.0)[0]["body"]["variables"] == {}
    assert state.admin({"op": "client_vars_get", "room": "r", "device": "N1"}, 115.0)[0]["body"]["variables"] == {"k": "N1"}
    assert set(store.load_room("r").client_vars) == {"N1"}  # type: ignore[union-attr]
    assert post("N3", 115.0) == "ok"
    # A device that joins is no longer queued: its variables live with its number.
    state.handle(CTRL, b"n1", b"r", hello("N1"), 116.0)
    run(state, store, until=130.0, start=117.0, keep=((b"a", b"r", b"A"), (b"n1", b"r", b"N1")))
    assert state.admin({"op": "client_vars_get", "room": "r", "device": "N1"}, 130.0)[0]["body"]["variables"] == {"k": "N1"}
    assert state.stats()["room_counters"]["queued_devices_expired"] == 1
    store.close()


def test_queued_client_variables_reach_the_room_when_their_device_joins() -> None:
    state = state_with()
    state.handle(CTRL, b"a", b"r", hello("A"), 0.0)
    state.admin({"op": "client_vars_set", "room": "r", "device": "late", "variables": {"k": "v"}}, 1.0)

    out = state.handle(CTRL, b"l", b"r", hello("late"), 2.0)

    # The reference sends the room a CLIENT_VAR_SYNC; the joiner has it in its full NV.
    sync = ClientVarSync((ClientVars(2, (VarEntry("k", "v", 0),)),))
    assert (b"r", frozenset({b"a"}), sync) in out_msgs(out)
    # A device whose first message is a pose joins the same way.
    state.admin({"op": "client_vars_set", "room": "r", "device": "walker", "variables": {"w": "1"}}, 3.0)
    out = state.handle(XFM, b"xw", b"r", pose("walker"), 3.0)
    assert out_msgs(out) == [
        (b"r", frozenset({b"a", b"l"}), ClientVarSync((ClientVars(3, (VarEntry("w", "1", 0),)),)))
    ]
    # A first message that clears the variables comes after the announcement.
    state.admin({"op": "client_vars_set", "room": "r", "device": "clearer", "variables": {"c": "1"}}, 3.5)
    out = state.handle(CTRL, b"c", b"r", encode(ClientVarClear(0, "clearer")), 3.5)
    assert [(ids, msg) for _, ids, msg in of_type(out, ClientVarSync)] == [
        (frozenset({b"a", b"l"}), ClientVarSync((ClientVars(4, (VarEntry("c", "1", 0),)),))),
        (frozenset({b"a", b"l", b"c"}), ClientVarSync((ClientVars(4, ()),))),
    ]
    # Nothing queued, nothing announced: only the joiner's own full NV.
    syncs = of_type(state.handle(CTRL, b"p", b"r", hello("plain"), 4.0), ClientVarSync)
    assert [ids for _, ids, _ in syncs] == [frozenset({b"p"})]


# ---------------------------------------------------- admission control


def test_max_clients_per_room_refuses_a_joiner_without_a_number() -> None:
    state = state_with(max_clients_per_room=2)
    assert number_in(state.handle(CTRL, b"a", b"r", hello("A"), 0.0), "A") == 1
    assert number_in(state.handle(CTRL, b"b", b"r", hello("B", stealth=True), 0.0), "B") == 2

    assert state.handle(CTRL, b"c", b"r", hello("C"), 0.5) == []
    assert state.handle(XFM, b"xd", b"r", pose("D"), 0.5) == []
    assert state.drops.counts["room_full"] == 2
    assert client_no(state, "r", "C", 0.5) is None and set(state.rooms["r"].members) == {"A", "B"}
    # Members keep working; a slot that frees up is taken.
    assert state.handle(CTRL, b"a", b"r", encode(Rpc(0, "A", (), "f", "[]")), 1.0)
    run(state, None, until=7.0, start=1.0, keep=((b"b", b"r", b"B"),))
    assert number_in(state.handle(CTRL, b"c", b"r", hello("C"), 7.5), "C") == 3


def test_control_rate_per_connection_drops_the_excess_and_spares_others() -> None:
    state = state_with(shard={"max_control_rate": 5.0})
    state.handle(CTRL, b"a", b"r", hello("A"), 1.0)
    state.handle(CTRL, b"b", b"r", hello("B"), 1.0)
    rpc = encode(Rpc(0, "A", (), "f", "[]"))
    delivered = [bool(state.handle(CTRL, b"a", b"r", rpc, 1.0)) for _ in range(6)]
    # A burst of one second's worth: the hello and 4 RPCs, then dropped.
    assert delivered == [True, True, True, True, False, False]
    assert state.drops.counts["control_rate_limited"] == 2
    # Another connection in the same room is not delayed or limited by it.
    assert state.handle(CTRL, b"b", b"r", encode(Rpc(0, "B", (), "f", "[]")), 1.0)
    # 0.2 s later one token is back.
    assert [bool(state.handle(CTRL, b"a", b"r", rpc, 1.2)) for _ in range(2)] == [True, False]
    # Poses are never limited.
    assert state.handle(XFM, b"xa", b"r", pose("A"), 1.2) == [] and state.drops.counts["control_rate_limited"] == 3
    run(state, None, until=5.0, start=2.0, keep=((b"a", b"r", b"A"),))
    assert len(state._control_buckets) <= 1  # refilled buckets are forgotten


def _guarded(guard: bool) -> ShardState:
    state = state_with(guard_device_takeover=guard)
    state.handle(CTRL, b"a", b"r", hello("A"), 0.0)
    state.handle(CTRL, b"w", b"r", hello("W"), 0.0)
    return state


def _rpc_to_a(state: ShardState, now: float) -> frozenset[bytes]:
    out = out_msgs(state.handle(CTRL, b"w", b"r", encode(Rpc(0, "W", (1,), "f", "[]")), now))
    return out[0][1]


def test_takeover_guard_refuses_a_second_connection_while_the_first_is_live() -> None:
    state = _guarded(True)
    state.handle(CTRL, b"a", b"r", gset("A", "g", "1"), 2.0)  # A's connection heard at 2 s

    assert state.handle(CTRL, b"x", b"r", hello("A"), 3.0) == []
    assert state.handle(CTRL, b"x", b"r", encode(Rpc(0, "A", (), "hijack", "[]")), 3.0) == []
    assert state.drops.counts["device_takeover_refused"] == 2
    assert _rpc_to_a(state, 3.0) == frozenset({b"a"})
    # Poses keep A a member, but its control connection is silent past client_timeout (5 s).
    for t in range(3, 8):
        state.handle(XFM, b"xa", b"r", pose("A"), float(t))
        state.tick(float(t))
    out = state.handle(CTRL, b"x", b"r", hello("A"), 7.5)
    assert number_in(out, "A") == 1 and _rpc_to_a(state, 7.5) == frozenset({b"x"})


def test_without_the_guard_a_new_connection_takes_the_device_over_at_once() -> None:
    state = _guarded(False)
    out = state.handle(CTRL, b"x", b"r", hello("A"), 1.0)
    assert number_in(out, "A") == 1 and _rpc_to_a(state, 1.0) == frozenset({b"x"})
    assert "device_takeover_refused" not in state.drops.counts


class _FakeStore:
    """A store whose health can be switched: rooms stay in memory while it is degraded."""

    kind = "fake"

    def __init__(self) -> None:
        from shard_worker.store.base import RoomSnapshot, StoreHealth

        self._health = StoreHealth(kind=self.kind)
        self.snapshots: dict[str, RoomSnapshot] = {}
        self.make = RoomSnapshot

    def health(self):  # noqa: ANN201
        return self._health

    def acquire(self, room_id: str) -> int:
        from shard_worker.store.base import StoreUnavailable

        if self._health.degraded:
            raise StoreUnavailable("down")
        return 1

    def load_room(self, room_id: str):  # noqa: ANN201
        return self.snapshots.get(room_id)

    def release(self, room_ids: list[str]) -> None:
        pass


def test_no_room_leaves_memory_while_the_store_is_degraded_and_reloaded_rooms_keep_their_lease() -> None:
    store = _FakeStore()
    state = state_with(store, shard={"room_idle_evict": 1.0, "max_rooms": 1})  # type: ignore[arg-type]
    state.handle(CTRL, b"a", b"r", hello("A"), 0.0)
    store.snapshots["r"] = store.make("r", devices={"A": 1}, next_client_no=2)
    store._health.degraded = True
    run(state, None, until=20.0, start=1.0)
    assert "r" in state.rooms and not state.evicted
    # At the cap, nothing is evicted either: it could not be loaded back.
    assert state.handle(CTRL, b"b", b"other", hello("B"), 20.5) == []
    assert state.drops.counts["room_limit"] == 1

    store._health.degraded = False
    state.tick(21.0)
    assert "r" in state.evicted
    # Used again in the same turn: its lease must not be given back.
    state.handle(CTRL, b"a", b"r", hello("A"), 21.0)
    assert state.take_released() == []
    state.tick(30.0)  # A times out
    state.tick(32.0)  # idle for 2 s > 1 s: evicted again
    assert "r" in state.evicted and state.take_released() == ["r"]
