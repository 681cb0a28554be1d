"""Load on `internvlu serve`: concurrent clients against nano on 127.0.0.1 for a fixed time; one JSON line.

    python benchmarks/bench_serve.py --clients 20 --seconds 60

Starts a real server (`--model nano`, its own out-dir and config folder, `--max-queue` as given), then runs
`--clients` asyncio clients for `--seconds`. Most clients call `POST /v1/images/generations` and wait (64x64,
2 steps, b64_json); every `--jobs-every`-th client uses the jobs API instead (submit, follow the events) and
cancels every `--cancel-every`-th of its jobs after the first event. A client answered 429 waits the
Retry-After it was given, as a polite client does.

Checked, and counted in the line: no 5xx; every accepted job ends done, or cancelled when (and only when) it was
asked to; every 429 carries the queue_full code and a Retry-After; the out-dir holds one PNG per image made and no
temporary file. Latency (p50/p95) is of the generation calls answered 200, from send to full answer, queueing
included; throughput is images written per second over the run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests")]  # the tests' server runner: the same process the server tests start

from server.helpers import Server, pngs, temp_files  # noqa: E402


def quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1], 3) if len(values) > 1 \
        else round(values[0], 3)


async def follow(client: httpx.AsyncClient, job_id: str, cancel: bool) -> str:
    """The job's last event name, cancelling it after its first event when asked to."""
    async with client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        last = None
        name = None
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                name = line[7:]
                if cancel and last is None:
                    await client.post(f"/v1/jobs/{job_id}/cancel")
                last = name
    return last


async def client_loop(index: int, args, server: Server, until: float, tally: Counter, latencies: list[float],
                      problems: list[str]) -> None:
    body = {"prompt": f"a red circle, client {index}", "size": args.size, "steps": args.steps}
    jobs_client = args.jobs_every and index % args.jobs_every == args.jobs_every - 1
    made = 0
    async with httpx.AsyncClient(base_url=server.url, timeout=300) as client:
        while time.monotonic() < until:
            start = time.perf_counter()
            if jobs_client:
                response = await client.post("/v1/jobs", json={"kind": "generate", **body})
            else:
                response = await client.post("/v1/images/generations", json=body)
            tally[f"http_{response.status_code}"] += 1
            if response.status_code == 429:
                error = response.json()["error"]
                if error["code"] != "queue_full" or "Retry-After" not in response.headers:
                    problems.append(f"429 without queue_full and Retry-After: {response.text[:200]}")
                await asyncio.sleep(int(response.headers.get("Retry-After", "1")))
                continue
            if response.status_code >= 500:
                problems.append(f"{response.status_code}: {response.text[:200]}")
                continue
            if jobs_client and response.status_code == 202:
                made += 1
                cancel = args.cancel_every and made % args.cancel_every == 0
                tally["jobs_cancel_asked"] += bool(cancel)
                last = await follow(client, response.json()["id"], bool(cancel))
                tally[f"jobs_{last}"] += 1
                if last == "cancelled" and not cancel or last not in ("done", "cancelled"):
                    problems.append(f"job ended {last} (cancel asked: {bool(cancel)})")
                if last == "done":
                    tally["images"] += 1
            elif response.status_code == 200:
                latencies.append(time.perf_counter() - start)
                tally["images"] += len(response.json()["data"])
            else:
                problems.append(f"{response.status_code}: {response.text[:200]}")


async def load(args, server: Server) -> tuple[Counter, list[float], list[str], float]:
    tally: Counter = Counter()
    latencies: list[float] = []
    problems: list[str] = []
    start = time.monotonic()
    await asyncio.gather(*(client_loop(k, args, server, start + args.seconds, tally, latencies, problems)
                           for k in range(args.clients)))
    return tally, latencies, problems, time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--max-queue", type=int, default=16)
    parser.add_argument("--size", default="64x64")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--jobs-every", type=int, default=4, help="every Nth client uses the jobs API (0: none)")
    parser.add_argument("--cancel-every", type=int, default=3, help="a jobs client cancels every Nth job (0: none)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as folder:
        server = Server(Path(folder), "--max-queue", str(args.max_queue))
        try:
            tally, latencies, problems, elapsed = asyncio.run(load(args, server))
            still_serving = server.alive()
        finally:
            code = server.stop()
        written = len(pngs(server.out_dir))
        if written != tally["images"]:
            problems.append(f"{written} PNGs written for {tally['images']} images answered")
        if temp_files(server.out_dir):
            problems.append("temporary files left in the out-dir")
    print(json.dumps({
        "clients": args.clients, "seconds": round(elapsed, 1), "max_queue": args.max_queue, "size": args.size,
        "steps": args.steps, "responses": dict(sorted(tally.items())),
        "p50_s": quantile(latencies, 0.50), "p95_s": quantile(latencies, 0.95),
        "images_per_s": round(tally["images"] / elapsed, 2), "still_serving": still_serving, "server_exit": code,
        "problems": problems[:5], "ok": not problems and still_serving and code == 0,
    }))


if __name__ == "__main__":
    main()
