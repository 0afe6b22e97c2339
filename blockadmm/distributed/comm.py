"""Communication between the ranks: point-to-point inboxes, waits with deadlines, and failure diagnosis.

Every wait has a deadline. A rank whose wait fails publishes what it waited for in the rendezvous store
and follows the published waits to the rank at the end of the chain (the one that died, hangs or
raised), which it names in a :class:`RankFailure`. A rank that raises publishes its error first
(:meth:`Comm.publishing_errors`), so the others report it by rank.
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager, suppress

import torch
import torch.distributed as dist


class RankFailure(RuntimeError):
    """Another rank died, hung or raised; `.rank` is the culprit (None when it could not be told)."""

    def __init__(self, msg: str, rank: int | None = None):
        super().__init__(msg)
        self.rank = rank


def default_store():
    """The key-value store of the default process group (None when it cannot be reached)."""
    try:
        return dist.distributed_c10d._get_default_store()
    except Exception:  # noqa: BLE001 - a group built without a store
        return None


class Comm:
    """One rank's links to the others: sends and receives up and down the chain of ranks, collectives,
    all with the deadline `timeout`; the store keys under blockadmm/ carry the failure diagnosis."""

    def __init__(
        self,
        rank: int,
        world: int,
        device: torch.device,
        timeout: float,
        store=None,
        backend: str | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        self.rank, self.world, self.device, self.dtype = rank, world, device, dtype  # dtype: of every message
        self.backend = backend or dist.get_backend()
        self.timeout = float(timeout)
        self.grace = min(3.0, max(0.5, self.timeout / 4))  # for the ranks of a chain of waits to publish
        self.store = store
        self.step = 0  # the step being worked on, for the messages
        self.wait_s = 0.0  # time blocked on other ranks
        self._pending: list[tuple[object, torch.Tensor, int]] = []
        self.groups: dict[str, object] = {}

    def join(self) -> None:
        """Set up the two point-to-point groups (one per direction: NCCL needs a pair and group to carry
        messages one way only); a rank that never arrives is named."""
        self.store_set(f"blockadmm/joined/{self.rank}", {"step": self.step})
        try:
            for direction in ("up", "down"):
                self.groups[direction] = dist.new_group(
                    list(range(self.world)), timeout=datetime.timedelta(seconds=self.timeout)
                )
        except Exception as e:
            time.sleep(self.grace)
            missing = [q for q in range(self.world) if self.store_get(f"blockadmm/joined/{q}") is None]
            if missing:
                raise RankFailure(
                    f"rank {missing[0]} never joined the run during set-up (it died or hangs before "
                    f"building its trainer); rank {self.rank} waited {self.timeout:.0f} s",
                    missing[0],
                ) from e
            self.raise_failure(None, "the set-up of the process groups", e)

    # ------------------------------------------------------------------ sends, waits, collectives
    def isend(self, tensor: torch.Tensor, peer: int, direction: str) -> None:
        work = dist.isend(tensor, dst=peer, group=self.groups[direction])
        self._pending.append((work, tensor, peer))
        if len(self._pending) > 8:
            work, _, peer = self._pending.pop(0)
            self.wait(work, peer, "a message to be taken")

    def flush_sends(self) -> None:
        while self._pending:
            work, _, peer = self._pending.pop(0)
            self.wait(work, peer, "a message to be taken")

    def recv(self, shape: Sequence[int], peer: int, direction: str, what: str) -> torch.Tensor:
        buf = torch.empty(tuple(shape), dtype=self.dtype, device=self.device)
        self.wait(dist.irecv(buf, src=peer, group=self.groups[direction]), peer, what)
        return buf

    def wait(self, work, peer: int | None, what: str) -> None:
        """Wait for `work` until the deadline; any failure becomes a RankFailure naming the culprit."""
        t0 = time.perf_counter()
        try:
            if self.backend == "nccl":
                deadline = time.monotonic() + self.timeout
                while not work.is_completed():
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"no completion within {self.timeout:.0f} s")
                    time.sleep(0.0001)
                work.wait()
            else:
                work.wait(timeout=datetime.timedelta(seconds=self.timeout))
        except Exception as e:  # noqa: BLE001 - every communication failure becomes a RankFailure
            self.raise_failure(peer, what, e)
        self.wait_s += time.perf_counter() - t0

    def all_reduce(self, tensor: torch.Tensor, what: str) -> torch.Tensor:
        """Sum over the ranks (on the device, returned on the CPU)."""
        tensor = tensor.to(self.device)
        self.wait(dist.all_reduce(tensor, async_op=True), None, what)
        return tensor.cpu()

    # ------------------------------------------------------------------ failure diagnosis
    def store_set(self, key: str, value) -> None:
        with suppress(Exception):  # the store itself may be gone with the rank that hosted it
            self.store.set(key, json.dumps(value))

    def store_get(self, key: str):
        with suppress(Exception):
            if self.store.check([key]):
                return json.loads(self.store.get(key))
        return None

    def publish_error(self, error: BaseException) -> None:
        self.store_set(
            f"blockadmm/fault/{self.rank}", {"error": f"{type(error).__name__}: {error}"[:2000], "step": self.step}
        )

    @contextmanager
    def publishing_errors(self):
        """Run a block of work; an error of this rank (not a failure of another) is published before it
        propagates, so the ranks waiting on this one name it."""
        try:
            yield
        except RankFailure:
            raise
        except Exception as e:
            self.publish_error(e)
            raise

    def agree(self, failed: BaseException | None, what: str) -> None:
        """Collective: every rank learns whether any rank failed `what`; a rank raises its own error, the
        others a RankFailure."""
        if failed is not None:
            self.publish_error(failed)
        v = self.all_reduce(torch.tensor([0.0 if failed is None else 1.0]), what)
        if failed is not None:
            raise failed
        if float(v[0]) > 0:
            culprit, reason = self.diagnose(None)
            raise RankFailure(f"rank {culprit} failed {what}: {reason}", culprit)

    def raise_failure(self, peer: int | None, what: str, exc: BaseException) -> None:
        """Publish what this rank waited for; name the rank at the end of the chain of waits."""
        me = self.rank
        self.store_set(f"blockadmm/blocked/{me}", {"peer": peer, "what": what, "step": self.step})
        deadline = time.monotonic() + self.grace
        while True:
            culprit, reason = self.diagnose(peer)
            if reason is not None or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if culprit is None:
            msg = f"rank {me}: a collective failed ({what}) and no rank could be named: {exc}"
        elif reason is not None:
            msg = f"rank {culprit} failed: {reason} (rank {me} stopped while waiting for {what})"
        else:
            timed_out = "imed out" in str(exc) or "timeout" in str(exc) or isinstance(exc, TimeoutError)
            how = "got no answer within" if timed_out else "lost the connection before"
            msg = (
                f"rank {culprit} died or hangs: rank {me} waited for {what} from rank {peer} at step {self.step} "
                f"and {how} the {self.timeout:.0f} s timeout ({type(exc).__name__}: {str(exc)[:200]})"
            )
        raise RankFailure(msg, culprit) from exc

    def diagnose(self, peer: int | None) -> tuple[int | None, str | None]:
        """(culprit, reason or None): follow the published waits from `peer` to a rank that is not waiting."""
        if peer is None:  # a collective: the ranks that are neither blocked nor failed
            silent = []
            for q in range(self.world):
                fault = self.store_get(f"blockadmm/fault/{q}")
                if fault is not None:
                    return q, fault["error"]
                if q != self.rank and self.store_get(f"blockadmm/blocked/{q}") is None:
                    silent.append(q)
            return (silent[0] if silent else None), None
        q, seen = peer, set()
        while q not in seen:
            seen.add(q)
            fault = self.store_get(f"blockadmm/fault/{q}")
            if fault is not None:
                return q, fault["error"]
            blocked = self.store_get(f"blockadmm/blocked/{q}")
            if blocked is None or blocked["peer"] is None:
                return q, None
            q = blocked["peer"]
        return q, None


class Inbox:
    """Receives one neighbour's messages in the order it sends them (irecvs posted ahead, matched by key)."""

    def __init__(self, comm: Comm, peer: int, direction: str, keys: Sequence, shape_of: Callable, window: int = 2):
        self.comm, self.peer, self.direction = comm, peer, direction
        self.keys, self.shape_of, self.window = list(keys), shape_of, window
        self.pos, self.posted = 0, {}

    def _post(self) -> None:
        key = self.keys[self.pos]
        buf = torch.empty(self.shape_of(key), dtype=self.comm.dtype, device=self.comm.device)
        self.posted[key] = (buf, dist.irecv(buf, src=self.peer, group=self.comm.groups[self.direction]))
        self.pos += 1

    def get(self, key, what: str) -> torch.Tensor:
        while key not in self.posted:
            if self.pos >= len(self.keys):
                raise RuntimeError(f"message {key} from rank {self.peer} is not in the schedule; this is a bug")
            self._post()
        buf, work = self.posted.pop(key)
        self.comm.wait(work, self.peer, what)
        while len(self.posted) < self.window and self.pos < len(self.keys):
            self._post()
        return buf
