#!/usr/bin/env python3
"""CPU per stored response written to a SQLite store, by id order and batch size.

    .venv/bin/python bench/store_writes.py

A store already holding ``--rows`` responses takes ``--writes`` more, in batches of 8 (what a
shared gateway commits under load: puts wait for their commit) and of 500 (what a lone worker's
writer gathers), with the gateway's time-ordered ids and with random ones (uuid4, as before).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
import uuid

from modelwire.dialects.openai_responses import new_id
from modelwire.gateway.store import PackedResponse, Store, StoredResponse


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def responses(n: int, ordered: bool) -> list[PackedResponse]:
    """R -> C sized responses: a one-message input, a one-message answer, the response document."""

    def mint(prefix: str) -> str:
        return new_id(prefix) if ordered else f"{prefix}_{uuid.uuid4().hex}"

    out = []
    for _ in range(n):
        answer = {"type": "output_text", "text": "Foxes are small omnivorous mammals. " * 3}
        message = {"type": "message", "id": mint("msg"), "role": "assistant", "content": [answer]}
        out.append(
            PackedResponse.pack(
                StoredResponse(
                    id=mint("resp"),
                    key_name="bench",
                    model="bench-model",
                    created_at=time.time(),
                    previous_response_id=None,
                    input_items=[{"type": "message", "role": "user", "content": "Write one sentence."}],
                    output_items=[message],
                    response={"object": "response", "status": "completed", "usage": {"total_tokens": 65}},
                    instructions="You are a helpful assistant.",
                )
            )
        )
    return out


def measure(rows: int, writes: int, batch: int, ordered: bool) -> float:
    with tempfile.TemporaryDirectory() as root:
        store = Store(f"sqlite:///{root}/state.db")
        try:
            before = responses(rows, ordered)
            for at in range(0, rows, 500):
                store.run_statements(store.response_statements(before[at : at + 500]))
            new = responses(writes, ordered)
            start = cpu()
            for at in range(0, writes, batch):
                store.run_statements(store.response_statements(new[at : at + batch]))
            return (cpu() - start) / writes * 1e6
        finally:
            store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=40_000)
    ap.add_argument("--writes", type=int, default=16_000)
    args = ap.parse_args()
    print("| ids | batch of 8 | batch of 500 |\n|---|---|---|")
    for ordered in (False, True):
        cells = [f"{measure(args.rows, args.writes, batch, ordered):.1f} µs" for batch in (8, 500)]
        print(f"| {'time-ordered' if ordered else 'random'} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
