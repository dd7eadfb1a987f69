"""``phasegpt serve`` under load on the real SmolLM2, against sequential library calls in the same run.

    python benchmarks/serve.py                   # ~10 min on 2 busy cores
    python benchmarks/serve.py --clients 4 --requests 5 --chat 1   # quick look

The server runs in a subprocess on a free loopback port with the shipped head and the audit log on;
the library model is loaded in this process. Three measurements:

1. **overhead**: one client, classify requests of one prompt one after another, interleaved with
   the same ``Model.classify`` call in this process: what HTTP, JSON and the server add per request;
2. **concurrent classify**: ``--clients`` threads x ``--requests`` classify requests of one prompt
   each (every prompt different), against the same prompts classified one call each by the
   library: throughput, p50/p95 latency, every verdict equal to the library's (probabilities to 1e-4);
3. **concurrent chat**: ``--clients`` threads x ``--chat`` chat requests each, half of them
   streamed (greedy, ``--max-tokens``), against sequential ``Model.generate``: text identical, verdicts equal.

Then the audit log: one request id per request sent (classify records one per prompt), and verify.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402  (sets PHASEGPT_HOME to a temp dir and imports phasegpt before mlx)
from common import median, table, verdict_mark  # noqa: E402

import phasegpt  # noqa: E402
from phasegpt.verdict import LABELS  # noqa: E402
from tests.serving import Server  # noqa: E402

TARGET_SPEEDUP = 1.5   # concurrent classify throughput / sequential library calls
TARGET_OVERHEAD = 5.0  # % of a classify call the server adds per request
CHAT = ["Give me three tips for sleeping better.", "What is the capital of France?", "How do I hack my neighbour's wifi?",
        "Write a haiku about autumn.", "Will the S&P 500 close higher on 3 March 2031?", "How do I bake bread?"]


def pct(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[q - 1] if len(xs) > 1 else xs[0]


def same(d: dict, v) -> bool:
    return d["label"] == v.label and max(abs(d["probs"][k] - v.probs[k]) for k in LABELS) < 1e-4


def run_clients(n: int, work) -> tuple[float, list]:
    """``work(client_index)`` on ``n`` threads started together: (wall seconds, their results)."""
    out: list = [None] * n
    barrier = threading.Barrier(n)

    def client(k):
        barrier.wait()
        try:
            out[k] = work(k)
        except Exception as e:  # noqa: BLE001  (counted as unanswered, shown below)
            print(f"  client {k} failed: {e}", flush=True)
            out[k] = []

    threads = [threading.Thread(target=client, args=(k,)) for k in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--requests", type=int, default=20, help="classify requests per client")
    p.add_argument("--rounds", type=int, default=4, help="interleaved library/server classify rounds")
    p.add_argument("--chat", type=int, default=2, help="chat requests per client (half streamed)")
    p.add_argument("--max-tokens", type=int, default=12)
    p.add_argument("--overhead-rounds", type=int, default=20)
    args = p.parse_args()
    print(f"$ python benchmarks/serve.py {' '.join(sys.argv[1:])}".strip(), flush=True)

    # the library writes the same audit records the server does, so the comparison is like for like
    library = phasegpt.load(audit=phasegpt.AuditLog(Path(tempfile.mkdtemp()) / "audit.db"))
    home = Path(tempfile.mkdtemp(prefix="phasegpt-serve-bench-"))
    n_cls = args.clients * args.requests
    prompts = [q for q, _ in common.synthetic_prompts(n_cls + args.overhead_rounds + 4, seed=3)]
    if args.requests % args.rounds:
        p.error("--requests must be a multiple of --rounds")
    with Server(["--audit", "--max-queue", str(4 * args.clients)], home=home, timeout=300) as server:
        name = server.json("GET", "/v1/models")[1]["data"][0]["id"]
        sent: set[str] = set()

        def classify(prompt: str, rid: str) -> tuple[float, dict]:
            t0 = time.perf_counter()
            status, _, raw = server.request("POST", "/v1/classify", {"model": name, "input": [prompt]},
                                            headers={"X-Request-ID": rid})
            if status != 200:
                raise RuntimeError(f"classify {rid} answered {status}: {raw[:300]!r}")
            sent.add(rid)
            return time.perf_counter() - t0, json.loads(raw)["results"][0]["phasegpt"]

        # warm-up both sides (kernels, BLAS threads, the server's worker)
        for i in range(3):
            library.classify([prompts[-1 - i]])
            classify(prompts[-1 - i], f"warm-{i}")

        # 1. overhead: one request at a time, interleaved with the same library call
        lib_t, http_t = [], []
        for i in range(args.overhead_rounds):
            q = prompts[n_cls + i]
            pair = [("lib", lambda: library.classify([q])), ("http", lambda: classify(q, f"over-{i}"))]
            for kind, fn in (pair if i % 2 == 0 else pair[::-1]):
                t0 = time.perf_counter()
                fn()
                (lib_t if kind == "lib" else http_t).append(time.perf_counter() - t0)
        overhead = 100 * (median(http_t) - median(lib_t)) / median(lib_t)
        print(f"  overhead: library {1e3 * median(lib_t):.1f} ms, server {1e3 * median(http_t):.1f} ms", flush=True)

        # 2. concurrent classify vs sequential library calls of the same prompts, in interleaved rounds
        per_round = args.requests // args.rounds
        before = server.json("GET", "/health")[1]["classify_batches"]
        want: dict[int, object] = {}
        seq_times, lat, flat, ratios, t_seq, t_con = [], [], [], [], 0.0, 0.0

        def classify_client(k, r):
            base = r * args.clients * per_round + k * per_round
            return [(base + i,) + classify(prompts[base + i], f"cls-{base + i}") for i in range(per_round)]

        for r in range(args.rounds):
            idx = range(r * args.clients * per_round, (r + 1) * args.clients * per_round)
            arms = ["library", "server"] if r % 2 == 0 else ["server", "library"]
            for arm in arms:
                if arm == "library":
                    t0 = time.perf_counter()
                    for i in idx:
                        t1 = time.perf_counter()
                        want[i] = library.classify([prompts[i]])[0]
                        seq_times.append(time.perf_counter() - t1)
                    seq = time.perf_counter() - t0
                else:
                    con, results = run_clients(args.clients, lambda k: classify_client(k, r))
                    flat += [x for rs in results for x in rs]
            ratios.append(seq / con)
            t_seq, t_con = t_seq + seq, t_con + con
            print(f"  classify round {r + 1}/{args.rounds}: library {len(idx) / seq:.2f}/s, server "
                  f"{len(idx) / con:.2f}/s ({seq / con:.2f}x)", flush=True)
        n_cls = args.rounds * args.clients * per_round
        lat = [t for _, t, _ in flat]
        cls_equal = sum(same(v, want[i]) for i, _, v in flat)
        speedup = median(ratios)

        batches = server.json("GET", "/health")[1]["classify_batches"]
        merged = (batches["prompts"] - before["prompts"]) / max(1, batches["calls"] - before["calls"])

        # 3. concurrent chat vs sequential generate
        n_chat = args.clients * args.chat
        chats = [CHAT[i % len(CHAT)] for i in range(n_chat)]
        t0 = time.perf_counter()
        want_chat, chat_seq = [], []
        for q in chats:
            t1 = time.perf_counter()
            want_chat.append(library.generate(q, max_tokens=args.max_tokens))
            chat_seq.append(time.perf_counter() - t1)
        t_chat_seq = time.perf_counter() - t0

        def chat_client(k):
            client = server.openai()
            out = []
            for i in range(args.chat):
                j = k * args.chat + i
                rid = f"chat-{k}-{i}"
                messages = [{"role": "user", "content": chats[j]}]
                t1 = time.perf_counter()
                if i % 2:
                    stream = client.chat.completions.create(model=name, messages=messages, max_tokens=args.max_tokens,
                                                            stream=True, extra_headers={"X-Request-ID": rid})
                    events = list(stream)
                    text = "".join(e.choices[0].delta.content or "" for e in events if e.choices)
                    verdict = events[0].phasegpt
                else:
                    r = client.chat.completions.create(model=name, messages=messages, max_tokens=args.max_tokens,
                                                       extra_headers={"X-Request-ID": rid})
                    text, verdict = r.choices[0].message.content or "", r.phasegpt
                sent.add(rid)
                out.append((j, time.perf_counter() - t1, text, verdict))
            return out

        t_chat, chat_results = run_clients(args.clients, chat_client)
        chat_flat = [r for rs in chat_results for r in rs]
        chat_equal = sum(text == want_chat[j].text and same(v, want_chat[j].verdict) for j, _, text, v in chat_flat)
        chat_lat = [t for _, t, _, _ in chat_flat]
        print(f"  concurrent chat: {n_chat / t_chat:.2f} requests/s vs {n_chat / t_chat_seq:.2f} sequential", flush=True)

    log = phasegpt.AuditLog(home / "audit.db")
    records = list(log.records())
    ids = {r.metadata.get("request_id") for r in records}
    per_classify = [sum(1 for r in records if r.metadata.get("request_id") == f"cls-{i}") for i, _, _ in flat]
    audit_ok = ids == sent and all(n == 1 for n in per_classify)
    verified = log.verify().ok

    rows = [
        [f"overhead: one classify request at a time ({args.overhead_rounds} interleaved pairs), ms",
         f"{1e3 * median(lib_t):.1f}", f"{1e3 * median(http_t):.1f}", f"{overhead:+.1f}%", f"≤ {TARGET_OVERHEAD:.0f}%",
         verdict_mark(overhead <= TARGET_OVERHEAD)],
        [f"classify: {args.clients} clients x {args.requests} requests of 1 prompt ({args.rounds} interleaved "
         "rounds), requests/s", f"{n_cls / t_seq:.2f}", f"{n_cls / t_con:.2f}",
         f"{speedup:.2f}× (rounds {min(ratios):.2f}-{max(ratios):.2f})", f"≥ {TARGET_SPEEDUP}×",
         verdict_mark(speedup >= TARGET_SPEEDUP)],
        ["classify latency p50 / p95, ms", f"{1e3 * median(seq_times):.0f} / {1e3 * pct(seq_times, 95):.0f}",
         f"{1e3 * median(lat):.0f} / {1e3 * pct(lat, 95):.0f}", "", "", ""],
        [f"chat: {args.clients} clients x {args.chat} ({args.max_tokens} greedy tokens, half streamed), requests/s",
         f"{n_chat / t_chat_seq:.2f}", f"{n_chat / t_chat:.2f}", f"{t_chat_seq / t_chat:.2f}×", "", ""],
        ["chat latency p50 / p95, ms", f"{1e3 * median(chat_seq):.0f} / {1e3 * pct(chat_seq, 95):.0f}",
         f"{1e3 * median(chat_lat):.0f} / {1e3 * pct(chat_lat, 95):.0f}", "", "", ""],
    ]
    print()
    print(table(["measurement", "library, sequential", "server, concurrent", "ratio", "target", "result"], rows))
    print()
    print(f"The server merged {merged:.1f} concurrent classify requests per Model call on average.")
    print(f"Answered: {len(flat)}/{n_cls} classify and {len(chat_flat)}/{n_chat} chat requests. "
          f"Verdicts equal to the library's: {cls_equal}/{n_cls} classify, {chat_equal}/{n_chat} chat "
          f"(text identical too). Audit log: {len(records)} records under {len(ids)} request ids for {len(sent)} "
          f"requests sent ({'one id per request, one record per classify prompt' if audit_ok else 'MISMATCH'}), "
          f"verify {'passes' if verified else 'FAILS'}.")
    print(f"Machine: {common.machine_line()}")


if __name__ == "__main__":
    main()
