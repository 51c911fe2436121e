"""The process's model registry: each model loads once, and no two loads overlap."""

from __future__ import annotations

import threading
import time

from evaluators.models import ModelRegistry


def test_each_key_loads_once_under_concurrent_callers() -> None:
    reg = ModelRegistry()
    calls: list[str] = []

    def load() -> object:
        calls.append("a")
        time.sleep(0.05)
        return object()

    got: list[object] = []
    threads = [threading.Thread(target=lambda: got.append(reg.get("a", load))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == ["a"]
    assert len({id(g) for g in got}) == 1


def test_loads_of_different_keys_never_overlap() -> None:
    # transformers' from_pretrained is not thread-safe: a warm-up thread loading the generator
    # while a job's thread loaded a check model once left a tied weight on the meta device.
    reg = ModelRegistry()
    active = 0
    peak = 0
    guard = threading.Lock()

    def loader(name: str) -> str:
        nonlocal active, peak
        with guard:
            active += 1
            peak = max(peak, active)
        time.sleep(0.05)
        with guard:
            active -= 1
        return name

    threads = [
        threading.Thread(target=reg.get, args=(f"m{i}", lambda i=i: loader(f"m{i}"))) for i in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak == 1
    assert reg.loaded_keys() == [f"m{i}" for i in range(6)]


def test_a_loader_may_load_what_it_needs_through_the_registry() -> None:
    reg = ModelRegistry()

    def engine() -> tuple[str, str]:
        # Nested loads on the same thread must not deadlock on the load lock.
        return ("engine", reg.get("tokenizer", lambda: "tok"))

    done: list[object] = []
    t = threading.Thread(target=lambda: done.append(reg.get("engine", engine)), daemon=True)
    t.start()
    t.join(timeout=5)
    assert done == [("engine", "tok")]
