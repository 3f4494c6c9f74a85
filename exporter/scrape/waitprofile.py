"""Sampled seconds per label set, bounded: the top K label sets plus `other` remainders, sums exact.

A sampler (sampler.py) adds, at each sample, the interval's seconds to the label set of every session
it saw. Label values come from the monitored server (database, user and application names: any tenant
chooses them), so the number of label sets is bounded here, whatever the server sends:

- at most `capacity` label sets are exported as themselves (`tracked`);
- a label set that finds the table full adds its seconds to a remainder row, where the tenant-chosen
  labels (`folded`) read `other` and the others (state, wait event: a closed set PostgreSQL defines)
  stay, so the remainder still says which wait it was; at most `capacity` such rows, beyond that one
  row where every label reads `other`.

So every sampled second lands in exactly one exported counter: sum(rate()) over the family is the
server's average number of sessions, whichever label sets are exported. Counters only grow.

Which label sets are tracked is decided again every `rotation` seconds: the top `capacity` by seconds
sampled in the period just ended, among the tracked ones and up to `capacity` candidates (untracked
label sets counted in that period; more are not counted one by one). A label set that leaves the top
stops being exported (its series ends; what it gains later goes to the remainder); one that enters
starts from what it gains from then on. Between rotations nothing is reordered, so a series never
jumps.
"""
from __future__ import annotations

from typing import Sequence

from exporter.scrape.exposition import escape_label_value, format_value

OTHER = "other"
# Bytes of one label value kept: PostgreSQL names are at most 63 bytes (NAMEDATALEN), but a server built
# with a larger NAMEDATALEN, or a future column, must not make pgvigil hold more.
MAX_VALUE_BYTES = 128


def bounded(value: object) -> str:
    """A label value as exported: text, at most MAX_VALUE_BYTES bytes of UTF-8 (cut on a character)."""
    text = "" if value is None else str(value)
    if len(text) > MAX_VALUE_BYTES // 4:
        raw = text.encode("utf-8", "replace")
        if len(raw) > MAX_VALUE_BYTES:
            text = raw[:MAX_VALUE_BYTES].decode("utf-8", "ignore")
    return text


class WaitProfile:
    """Seconds per label set of one family on one server; `folded`: the labels a remainder reads `other`."""

    def __init__(self, labels: Sequence[str], folded: Sequence[str], capacity: int, rotation: float) -> None:
        self.labels = tuple(labels)
        self._folded = tuple(i for i, name in enumerate(self.labels) if name in folded)
        self.capacity = capacity
        self.rotation = rotation
        self.tracked: dict[tuple[str, ...], float] = {}
        self.remainders: dict[tuple[str, ...], float] = {}
        self._all_other = tuple(OTHER for _ in self.labels)
        self._recent: dict[tuple[str, ...], float] = {}  # this period: tracked label sets and candidates
        self._period_left = rotation

    def add(self, samples: dict[tuple[str, ...], float], seconds: float) -> None:
        """One sample: `samples` maps label sets to sessions seen in it; each session counts `seconds`."""
        for key, sessions in samples.items():
            value = sessions * seconds
            if key in self.tracked:
                self.tracked[key] += value
            elif len(self.tracked) < self.capacity:
                self.tracked[key] = value
            else:
                self._to_remainder(key, value)
                if key not in self._recent and len(self._recent) >= 2 * self.capacity:
                    continue  # the candidate list is full: this one waits for a later period
            self._recent[key] = self._recent.get(key, 0.0) + value
        self._period_left -= seconds
        if self._period_left <= 0:
            self.rotate()

    def _to_remainder(self, key: tuple[str, ...], value: float) -> None:
        folded = tuple(OTHER if i in self._folded else v for i, v in enumerate(key))
        if folded in self.remainders or len(self.remainders) < self.capacity:
            self.remainders[folded] = self.remainders.get(folded, 0.0) + value
        else:
            self.remainders[self._all_other] = self.remainders.get(self._all_other, 0.0) + value

    def rotate(self) -> None:
        """The period ended: the top `capacity` label sets of the period are exported from now on.

        A tracked label set keeps its place on a tie (no churn of series for nothing); one with no
        sample in the period leaves, so a finished application does not hold a place forever."""
        self._period_left = self.rotation
        ranked = sorted(self._recent.items(), key=lambda item: (-item[1], item[0] not in self.tracked))
        keep = {key for key, value in ranked[:self.capacity] if value > 0}
        self.tracked = {key: self.tracked.get(key, 0.0) for key in keep}
        self._recent = {}

    def render(self, name: str, target_labels: str) -> list[str]:
        """The family's sample lines (no header), each with the target's constant labels first."""
        prefix = f"{name}{{{target_labels}," if target_labels else f"{name}{{"
        lines = []
        for rows in (self.tracked, self.remainders):
            for key, value in rows.items():
                labels = ",".join(f'{label}="{escape_label_value(v)}"' for label, v in zip(self.labels, key))
                lines.append(f"{prefix}{labels}}} {format_value(value)}\n")
        return lines

    @property
    def series(self) -> int:
        return len(self.tracked) + len(self.remainders)
