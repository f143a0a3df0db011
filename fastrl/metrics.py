"""Named metrics summed over a log window on the device, read back with one host sync.

An update returns a dict of device scalars. Algorithms may return different names on different
updates (TD3's actor metrics come on actor updates only), so sums are kept per set of names and
each name's mean is over the updates that returned it. Stacked members' updates return [E]
tensors (one value per member): their means are lists of E floats.
"""

from __future__ import annotations

import torch


class MetricWindow:
    def __init__(self) -> None:
        self._groups: dict[tuple[str, ...], list] = {}  # names -> [sum tensor, updates]

    def add(self, metrics: dict[str, torch.Tensor]) -> None:
        names = tuple(metrics)
        group = self._groups.get(names)
        values = torch.stack(tuple(metrics.values()))  # updates return detached float32 scalars
        if group is None:
            self._groups[names] = [values.clone(), 1]
        else:
            group[0].add_(values)
            group[1] += 1

    @property
    def updates(self) -> int:
        return sum(count for _, count in self._groups.values())

    def means(self) -> dict[str, float | list[float]]:
        """Each name's mean over the updates that returned it (NaN if any of them was NaN); a list
        per member for [E]-shaped metrics."""
        if not self._groups:
            return {}
        flat = torch.cat([s.reshape(-1) for s, _ in self._groups.values()]).tolist()  # the one host sync
        sums: dict[str, float | list[float]] = {}
        counts: dict[str, int] = {}
        at = 0
        for names, (total, count) in self._groups.items():
            width = total[0].numel()
            for name in names:
                value = flat[at] if total.dim() == 1 else flat[at: at + width]
                previous = sums.get(name)
                if previous is None:
                    sums[name] = value
                elif isinstance(value, list):
                    sums[name] = [a + b for a, b in zip(previous, value)]
                else:
                    sums[name] = previous + value
                counts[name] = counts.get(name, 0) + count
                at += width
        return {name: ([v / counts[name] for v in total] if isinstance(total, list) else total / counts[name])
                for name, total in sums.items()}

    def reset(self) -> None:
        self._groups.clear()

