"""Log-linear duration buckets: 8 per power of two, so a percentile read from the buckets
is within 12.5% of the true value. The C accelerator uses the same scheme."""

from __future__ import annotations

from collections.abc import Iterable

SUB_BITS = 3
_SUB = 1 << SUB_BITS


def bucket_index(value: int) -> int:
    if value < _SUB * 2:
        return max(value, 0)
    bits = value.bit_length() - 1
    sub = (value >> (bits - SUB_BITS)) & (_SUB - 1)
    return (bits - SUB_BITS + 1) * _SUB + sub


def bucket_low(index: int) -> int:
    """The smallest value in bucket ``index``."""
    if index < _SUB * 2:
        return index
    bits = index // _SUB + SUB_BITS - 1
    sub = index % _SUB
    return (1 << bits) + (sub << (bits - SUB_BITS))


def bucket_width(low: int) -> int:
    if low < _SUB * 2:
        return 1
    return 1 << (low.bit_length() - 1 - SUB_BITS)


def percentile(histogram: Iterable[tuple[int, int]], fraction: float, maximum: int) -> int | None:
    """The ``fraction`` percentile (nearest rank) of a ``[(bucket_low, count)]`` histogram,
    as the middle of its bucket, never above the exact ``maximum``."""
    buckets = sorted(histogram)
    total = sum(count for _, count in buckets)
    if total == 0:
        return None
    rank = max(1, -int(-fraction * total // 1))  # ceil(fraction * total)
    seen = 0
    for low, count in buckets:
        seen += count
        if seen >= rank:
            return min(low + bucket_width(low) // 2, maximum)
    return maximum
