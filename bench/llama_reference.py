"""The llama.cpp reference for bench/generate.py: the same SmolLM2 GGUF, one request at a time.

This is what a user who only needs generation would run instead: llama-cpp-python
serving the Q4_1 GGUF that Assay converts. It runs in the benchmark's own
environment, never the project's (llama-cpp-python builds from source here):

    make bench-llama-env    # once: .cache/bench-llama, ~4 min on 2 cores

bench/generate.py starts it as a subprocess with a JSON job on stdin and reads
JSON from stdout: per prompt, the wall time of its completion and its tokens.
"""

from __future__ import annotations

import json
import sys
import time


def main() -> int:
    job = json.load(sys.stdin)
    from llama_cpp import Llama

    llm = Llama(model_path=job["gguf"], n_ctx=2048, n_threads=job.get("threads", 2), seed=0, verbose=False)
    # Warm up as long as a real prompt: the first full-length call pays one-off set-up (seconds).
    for _ in range(2):
        llm.create_chat_completion(
            [{"role": "user", "content": job["prompts"][0]}], max_tokens=8, temperature=0
        )
    started = time.perf_counter()
    done: list[dict[str, float]] = []
    for prompt in job["prompts"]:
        out = llm.create_chat_completion(
            [{"role": "user", "content": prompt}], max_tokens=job["tokens"], temperature=0.0, top_k=1
        )
        # One at a time: request i finishes after every request before it.
        done.append({"at_s": time.perf_counter() - started, "tokens": out["usage"]["completion_tokens"]})
    json.dump({"results": done, "wall_s": time.perf_counter() - started}, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
