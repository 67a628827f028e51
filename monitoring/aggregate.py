"""Merge the metric snapshots pushed by every process into one cluster-wide view.

Rules (see docs "Operations"):

- Counters and histograms are summed across processes, sample by sample (each bucket, _sum
  and _count), so ``rate()`` over the sum is the cluster's rate.
- Gauges are summed over *live* processes only (pushed within :data:`LIVE_SECONDS`): a dead
  gateway's open connections are not open.
- Totals never go backwards when a process dies. Its last snapshot stays in the hash for
  :data:`RETAIN_SECONDS` (counted as usual), then is folded into the retained total (field
  :data:`RETIRED_FIELD`) and its field deleted, in one compare-and-swap script: concurrent
  scrapes either fold the same snapshot once or see it unfolded, never both.
- A folded process id is remembered (tombstone, for :data:`TOMBSTONE_SECONDS`); should it push
  again (it was cut off from Redis for longer than the retention), its later snapshots are
  ignored rather than counted twice. That loses its later increments; it never double-counts.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis
from prometheus_client.metrics_core import Metric

from monitoring.push import PUSH_INTERVAL
from paxyo.keys import Keys

LIVE_SECONDS = 3 * PUSH_INTERVAL
RETAIN_SECONDS = 15 * 60.0
TOMBSTONE_SECONDS = 86400.0
RETIRED_FIELD = "_retired"
CUMULATIVE_TYPES = frozenset({"counter", "histogram", "summary", "gaugehistogram"})

# KEYS[1]: the metrics hash. ARGV[1]: retired value read ('' if none), ARGV[2]: new retired
# value, then pairs of (process field, snapshot read). Applies only if nothing changed since.
_FOLD = """
if (redis.call('HGET', KEYS[1], '_retired') or '') ~= ARGV[1] then return 0 end
for i = 3, #ARGV, 2 do
  if (redis.call('HGET', KEYS[1], ARGV[i]) or '') ~= ARGV[i + 1] then return 0 end
end
redis.call('HSET', KEYS[1], '_retired', ARGV[2])
for i = 3, #ARGV, 2 do redis.call('HDEL', KEYS[1], ARGV[i]) end
return 1
"""

SampleKey = tuple[str, tuple[tuple[str, str], ...]]


@dataclass
class Family:
    name: str
    type: str
    help: str
    values: dict[SampleKey, float] = field(default_factory=dict)

    def add(self, samples: Iterable[list[Any]]) -> None:
        for name, labels, value in samples:
            key = (name, tuple(sorted(labels.items())))
            self.values[key] = self.values.get(key, 0.0) + value

    def as_metric(self) -> Metric:
        metric = Metric(self.name, self.help, self.type)
        for (name, labels), value in self.values.items():
            metric.add_sample(name, dict(labels), value)
        return metric


@dataclass
class ClusterView:
    """The merged families, and how many live processes of each kind pushed."""

    families: dict[str, Family] = field(default_factory=dict)
    live: dict[str, int] = field(default_factory=dict)

    def add(self, families: Iterable[Mapping[str, Any]], *, gauges: bool) -> None:
        for fam in families:
            if fam["type"] not in CUMULATIVE_TYPES and not gauges:
                continue
            merged = self.families.setdefault(
                fam["name"], Family(fam["name"], fam["type"], fam["help"]))
            merged.add(fam["samples"])


def merge(raw: Mapping[bytes, bytes], now: float) -> ClusterView:
    """The cluster view of a ``HGETALL`` of the metrics hash."""
    view = ClusterView()
    retired = _load_retired(raw)
    view.add(retired["families"], gauges=False)
    for process_id, value in raw.items():
        pid = process_id.decode()
        if pid == RETIRED_FIELD or pid in retired["gone"]:
            continue
        snap = orjson.loads(value)
        live = now - snap["at"] <= LIVE_SECONDS
        if live:
            view.live[snap["kind"]] = view.live.get(snap["kind"], 0) + 1
        view.add(snap["families"], gauges=live)
    return view


def fold_expired(client: redis.Redis, keys: Keys, raw: Mapping[bytes, bytes],
                 now: float) -> bool:
    """Fold snapshots older than the retention into the retained total; True if it did."""
    expired = {pid.decode(): value for pid, value in raw.items()
               if pid.decode() != RETIRED_FIELD
               and now - orjson.loads(value)["at"] > RETAIN_SECONDS}
    if not expired:
        return False
    retired = _load_retired(raw)
    view = ClusterView()
    view.add(retired["families"], gauges=False)
    for pid, value in expired.items():
        if pid not in retired["gone"]:
            view.add(orjson.loads(value)["families"], gauges=False)
    gone = {p: t for p, t in retired["gone"].items() if now - t < TOMBSTONE_SECONDS}
    gone.update(dict.fromkeys(expired, now))
    new_retired = orjson.dumps({"families": [
        {"name": f.name, "type": f.type, "help": f.help,
         "samples": [[n, dict(lb), v] for (n, lb), v in f.values.items()]}
        for f in view.families.values()], "gone": gone})
    args: list[bytes | str] = [raw.get(RETIRED_FIELD.encode(), b""), new_retired]
    for pid, value in expired.items():
        args += [pid, value]
    return bool(client.eval(_FOLD, 1, keys.metrics, *args))


def read_cluster(client: redis.Redis, keys: Keys, now: float | None = None) -> ClusterView:
    """Read every snapshot, fold the expired ones, and merge."""
    now = time.time() if now is None else now
    raw = client.hgetall(keys.metrics)
    if fold_expired(client, keys, raw, now):
        raw = client.hgetall(keys.metrics)
    return merge(raw, now)


def _load_retired(raw: Mapping[bytes, bytes]) -> dict[str, Any]:
    value = raw.get(RETIRED_FIELD.encode())
    return orjson.loads(value) if value else {"families": [], "gone": {}}
