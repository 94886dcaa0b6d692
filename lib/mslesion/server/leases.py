"""Next Sample for several annotators: each image handed out is held for a while, so the next request gets another.

MONAI Label's strategies are stateless: two radiologists pressing Next Sample together get the same study and one of
them corrects it for nothing. A lease per image (10 minutes by default, ``--conf sample_lease_s``) keeps a study with
whoever got it; when every candidate is held, the longest-held one is offered again (it was probably abandoned).
Leases live in the server process, which is where MONAI Label runs strategies.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Leases:
    def __init__(self, seconds: float = 600.0):
        self.seconds = seconds
        self._held: dict[str, float] = {}  # image id -> when its lease ends
        self._lock = threading.Lock()

    def choose(self, candidates: list[str], pick: Callable[[list[str]], dict | None]) -> dict | None:
        """``pick`` chooses among the candidates nobody holds (all of them, oldest lease first, when every one is
        held); the image it answers is then held for ``seconds``."""
        if not candidates:
            return None
        with self._lock:
            now = time.monotonic()
            self._held = {k: end for k, end in self._held.items() if end > now}
            free = [c for c in candidates if c not in self._held]
            pool = free or [min(candidates, key=lambda c: self._held[c])]
            answer = pick(pool)
            if answer and answer.get("id"):
                self._held[answer["id"]] = now + self.seconds
                answer["lease_seconds"] = self.seconds
            return answer

    def release(self, image_id: str) -> None:
        with self._lock:
            self._held.pop(image_id, None)


LEASES = Leases()
