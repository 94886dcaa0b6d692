"""Training stats in the words the GUIs read, and in the order they read them.

3D Slicer's MONAI Label module and OHIF's panel both take the *first* entry of /info's ``train_stats`` and read
``epoch``, ``total_epochs``, ``total_time`` (set means finished) and ``best_metric`` (0..1) from it. msapp's trainers
write ``epochs``, ``history`` and ``best_validation``; this module adds the GUI keys to whatever a trainer wrote and
puts the running (else the latest) training first.
"""

from __future__ import annotations

FINISHED = ("PUBLISHED", "DONE", "FINISHED", "STOPPED", "ERROR")


def _best_f1(stats: dict) -> float | None:
    best = stats.get("best_validation")
    if isinstance(best, dict) and isinstance(best.get("f1"), int | float):
        return float(best["f1"])
    scores = [row.get("f1") for row in stats.get("history") or [] if isinstance(row, dict)]
    scores = [s for s in scores if isinstance(s, int | float)]
    return float(max(scores)) if scores else None


def _total_epochs(stats: dict) -> int | None:
    for value in (stats.get("total_epochs"), stats.get("epochs"), (stats.get("recipe") or {}).get("epochs")):
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def for_gui(stats: dict, running: bool | None = None) -> dict:
    """``stats`` with epoch, total_epochs, best_metric, and total_time once the training has ended. ``running`` is
    whether the server's task queue runs this trainer now: a file still saying RUNNING after its process was stopped
    or killed is shown as STOPPED."""
    if not isinstance(stats, dict) or not stats:
        return stats
    out = dict(stats)
    if running is False and out.get("status") == "RUNNING":
        out["status"] = "STOPPED"
    history = [row for row in stats.get("history") or [] if isinstance(row, dict)]
    epoch = stats.get("epoch")
    if not isinstance(epoch, int) or isinstance(epoch, bool):
        epoch = max((row.get("epoch", 0) for row in history if isinstance(row.get("epoch"), int)), default=len(history))
    total = _total_epochs(stats) or max(epoch, 1)
    out["epoch"], out["total_epochs"] = epoch, total
    best = _best_f1(stats)
    out["best_metric"] = round(best, 4) if best is not None else 0.0
    if out.get("status") in FINISHED:
        seconds = stats.get("seconds")
        out["total_time"] = float(seconds) if isinstance(seconds, int | float) and seconds > 0 else 0.001
    else:
        out.pop("total_time", None)
    return out


def for_clients(train_stats: dict[str, dict], running: str | None = None) -> dict[str, dict]:
    """Every trainer's stats with the GUI keys: the running trainer's first, then the most recently started."""
    stats = {name: for_gui(value, running=name == running) for name, value in (train_stats or {}).items()}
    order = sorted(stats, key=lambda n: str((stats[n] or {}).get("start_ts") or ""), reverse=True)
    if running in stats:
        order.remove(running)
        order.insert(0, running)
    return {name: stats[name] for name in order}
