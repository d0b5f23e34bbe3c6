"""Load on ``attnlab serve``: concurrent clients on loopback, mixed translation and image requests.

The server runs in its own process (uvicorn over ``attnlab.web.create_app``) on a free 127.0.0.1
port; ``--clients`` asyncio clients (httpx) each send ``--requests`` requests one after another,
alternating a sentence to translate (all maps) and a PNG digit to classify (all maps and rollout).
Every answer must be 200 with the right model's payload: the run fails (exit 1) on any error.
Reported per kind and overall: requests, errors, p50 / p99 latency and requests per second.

Runs: RUN_DIR arguments (a translation and a classification run), or, without them, the shipped
``configs/generated_transformer.yaml`` and ``configs/digits_vit.yaml`` trained briefly here
(their model sizes; the weights matter little to the load).

Usage: ``python -m benchmarks.serve_load [RUN_DIR ...] [--clients 20] [--requests 50] [--out PATH]``
"""

from __future__ import annotations

import argparse
import asyncio
import io
import multiprocessing
import platform
import socket
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import RESULTS, write_json_to

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
BRIEF = [
    "training.max_minutes=null",
    "training.final_split=null",
    "training.tensorboard=false",
    "training.eval_every=null",
]
TRAIN = {
    "generated_transformer": [*BRIEF, "training.max_steps=60", "data.corpus.size=2000", "training.precision=fp32"],
    "digits_vit": [*BRIEF, "training.max_steps=60"],
}
SENTENCES = ["March 15, 2024", "forty-two", "May 1, 2020", "99,336,101", "seven hundred and five", "June 30, 1999"]


def train_runs(root: Path) -> list[Path]:
    """The two shipped configs, trained briefly under ``root``."""
    from attnlab.training import Trainer, load_config

    runs = []
    for name, overrides in TRAIN.items():
        Trainer(load_config(CONFIGS / f"{name}.yaml", [*overrides, f"output_dir={root / name}"])).run()
        runs.append(root / name)
    return runs


def serve(runs: list[str], sock: socket.socket) -> None:
    """The server process: load the runs, serve on ``sock`` until terminated."""
    import uvicorn

    from attnlab.web import create_app, load_models

    server = uvicorn.Server(uvicorn.Config(create_app(load_models(runs)), log_level="warning"))
    server.run(sockets=[sock])


def digit_pngs() -> list[bytes]:
    """scikit-learn's 8x8 digits as 32x32 PNGs (what a user would upload)."""
    from sklearn.datasets import load_digits

    images = load_digits().images[:20]
    out = []
    for image in images:
        buffer = io.BytesIO()
        pixels = (image * 255 / 16).astype(np.uint8)
        Image.fromarray(pixels, "L").resize((32, 32), Image.Resampling.NEAREST).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


async def client(index: int, base: str, models: dict, pngs: list[bytes], requests: int) -> list[tuple]:
    """One client's ``(kind, seconds, error or None)`` per request, sent one after another."""
    import httpx

    samples = []
    async with httpx.AsyncClient(base_url=base, timeout=120) as http:
        for i in range(requests):
            kind = "text" if (index + i) % 2 == 0 else "image"
            start = time.perf_counter()
            if kind == "text":
                text = SENTENCES[(index * requests + i) % len(SENTENCES)]
                response = await http.post(f"/api/models/{models['translation']}/translate", json={"text": text})
                ok = response.status_code == 200 and response.json().get("source") == text
            else:
                png = pngs[(index * requests + i) % len(pngs)]
                url = f"/api/models/{models['classification']}/classify"
                response = await http.post(url, content=png, headers={"content-type": "image/png"})
                ok = response.status_code == 200 and response.json().get("grid") == [4, 4]
            error = None if ok else f"{response.status_code} {response.text[:200]}"
            samples.append((kind, time.perf_counter() - start, error))
    return samples


async def load(base: str, clients: int, requests: int) -> tuple[list[tuple], float]:
    import httpx

    async with httpx.AsyncClient(base_url=base) as http:
        listed = (await http.get("/api/models")).json()["models"]
    models = {m["task"]: m["name"] for m in listed}
    pngs = digit_pngs()
    await asyncio.gather(*(client(c, base, models, pngs, 2) for c in range(2)))  # warm-up
    start = time.perf_counter()
    results = await asyncio.gather(*(client(c, base, models, pngs, requests) for c in range(clients)))
    return [s for r in results for s in r], time.perf_counter() - start


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def report(samples: list[tuple], wall: float) -> dict:
    rows = {}
    for kind in ("text", "image", "all"):
        chosen = [s for s in samples if kind in ("all", s[0])]
        seconds = [s[1] for s in chosen]
        rows[kind] = {
            "requests": len(chosen),
            "errors": sum(s[2] is not None for s in chosen),
            "p50_ms": 1e3 * statistics.median(seconds),
            "p99_ms": 1e3 * percentile(seconds, 0.99),
            "req_per_s": len(chosen) / wall,
        }
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", metavar="RUN_DIR")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--requests", type=int, default=50, help="per client")
    parser.add_argument("--out", type=Path, default=RESULTS / "serve_load.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = [str(r) for r in args.runs] or [str(r) for r in train_runs(Path(tmp))]
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        server = multiprocessing.get_context("spawn").Process(target=serve, args=(runs, sock), daemon=True)
        server.start()
        try:
            _wait_until_up(base, server)
            samples, wall = asyncio.run(load(base, args.clients, args.requests))
        finally:
            server.terminate()
            server.join(10)
    rows = report(samples, wall)
    print(f"{args.clients} clients x {args.requests} requests, loopback, {wall:.1f} s")
    print(f"{'kind':<6} {'requests':>8} {'errors':>6} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>7}")
    for kind, row in rows.items():
        print(
            f"{kind:<6} {row['requests']:>8} {row['errors']:>6} {row['p50_ms']:>8.1f} {row['p99_ms']:>8.1f} "
            f"{row['req_per_s']:>7.1f}"
        )
    for error in sorted({s[2] for s in samples if s[2]})[:5]:
        print("error:", error)
    machine = {"python": platform.python_version(), "cpus": multiprocessing.cpu_count()}
    report_json = {"clients": args.clients, "requests": args.requests, "wall_s": wall, "rows": rows, "machine": machine}
    write_json_to(args.out, report_json)
    return 1 if rows["all"]["errors"] else 0


def _wait_until_up(base: str, server, seconds: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not server.is_alive():
            raise RuntimeError(f"the server process exited with {server.exitcode}")
        try:
            if httpx.get(f"{base}/api/models").status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise RuntimeError(f"the server did not answer within {seconds} s")


if __name__ == "__main__":
    raise SystemExit(main())
