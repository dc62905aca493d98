"""A 'user' helper module: blocking calls made one call away from the coroutine."""

import time


def nap(seconds: float) -> None:
    time.sleep(seconds)  # NAP_LINE


def crunch(n: int) -> int:
    total = 0
    for i in range(n):  # CRUNCH_LINE
        total += i * i
    return total
