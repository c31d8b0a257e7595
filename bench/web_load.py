"""A burst of concurrent generate requests against the web app (`difflab serve`) on loopback.

The app is started as its own process, exactly as `difflab serve` runs it (the serve module's
main), so that its memory is its own: its peak resident set is the kernel's high-water mark
VmHWM from /proc/PID/status, and its resident set is also sampled every 20 ms during the
burst. After one warm-up request (which loads the model), `--requests` clients submit
/generate at once through gradio_client, the API the page itself uses; each waits for its
result. Reported: the burst's wall-clock time (first submit to last result), per-request
latency (submit to its result, with the client's download of the images), how
many came back with the right number of images, how many failed, whether the app answers a
request afterwards, and the server's resident memory before the burst and at its peak, for
each queue concurrency asked for (one server per concurrency).

The requests are what the Generate tab sends by default for the shipped `fashion-mnist`:
8 images, dpmpp_2m at 20 steps (its own [sample] settings), with the reverse-process GIF.
Run it with the project's environment (the web extra installed):

    .venv/bin/python bench/web_load.py [--requests 20] [--concurrency 1 2] [--n 8]

Writes bench/results/web_load.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]


def cpu() -> dict:
    """The CPU's name and the flags that decide difflab's precision (lscpu's fields)."""
    name, flags = platform.processor() or platform.machine(), []
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name") and name in ("", platform.machine()):
            name = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            flags = line.split(":", 1)[1].split()
    return {"name": name, "cores": os.cpu_count(),
            "flags": [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]}


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(concurrency: int, root: Path, requests: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "difflab.web.command", "--port", str(port), "--root",
               str(root), "--concurrency", str(concurrency), "--queue-size", str(requests + 8)]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, cwd=ROOT)
    deadline = time.monotonic() + 180
    for line in server.stdout:
        if "the app is at" in line:
            threading.Thread(target=lambda: [None for _ in server.stdout], daemon=True).start()
            return server, line.split("the app is at ")[1].split()[0]
        if time.monotonic() > deadline:
            break
    server.kill()
    raise RuntimeError("the app did not start")


def burst(url: str, pid: int, args: argparse.Namespace) -> dict:
    from gradio_client import Client

    def request(seed: int) -> tuple:
        return ("fashion-mnist", "(no class)", "", "", "dpmpp_2m", args.steps, 0, seed, args.n,
                True)

    client = Client(url, verbose=False)
    client.predict(*request(10_000), api_name="/generate")  # loads the model
    before = status_kib(pid, "VmRSS")
    samples, sampling = [], threading.Event()

    def sample_rss() -> None:
        while not sampling.is_set():
            samples.append(status_kib(pid, "VmRSS"))
            time.sleep(0.02)

    watcher = threading.Thread(target=sample_rss, daemon=True)
    watcher.start()
    t0 = time.perf_counter()
    finished: dict[int, float] = {}

    def done_at(seed: int):
        return lambda *_: finished.setdefault(seed, time.perf_counter())

    jobs = [(time.perf_counter(), client.submit(*request(seed), api_name="/generate",
                                                result_callbacks=[done_at(seed)]))
            for seed in range(args.requests)]
    latencies, complete, errors = [], 0, []
    for seed, (started, job) in enumerate(jobs):
        try:
            _, gallery, _, gif, _ = job.result(timeout=3600)
            complete += len(gallery) == args.n and gif is not None
        except Exception as e:  # counted, not raised: the point is how many fail
            errors.append(f"{type(e).__name__}: {e}")
        latencies.append(finished.get(seed, time.perf_counter()) - started)
    wall = max(finished.values(), default=time.perf_counter()) - t0
    sampling.set()
    watcher.join()
    try:
        answered = client.predict(100, api_name="/schedules").endswith(".png")
    except Exception:
        answered = False
    ordered = sorted(latencies)
    return {
        "wall_s": round(wall, 2),
        "latency_s": {"median": round(ordered[len(ordered) // 2], 2),
                      "p95": round(ordered[int(0.95 * (len(ordered) - 1))], 2),
                      "max": round(ordered[-1], 2)},
        "complete": complete, "lost": args.requests - complete - len(errors),
        "errors": errors, "answered_after": answered,
        "rss_before_burst_mb": round(before / 1024, 1),
        "rss_peak_during_burst_mb": round(max(samples) / 1024, 1),
        "vmhwm_mb": round(status_kib(pid, "VmHWM") / 1024, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=20)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 2])
    p.add_argument("--n", type=int, default=8, help="images per request")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", type=Path, default=RESULTS / "web_load.json")
    args = p.parse_args()
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for concurrency in args.concurrency:
            server, url = start_server(concurrency, Path(root), args.requests)
            try:
                rows.append({"concurrency": concurrency, **burst(url, server.pid, args)})
            finally:
                server.send_signal(signal.SIGINT)
                server.wait(timeout=60)
    result = {
        "command": shlex.join([sys.executable.replace(str(ROOT) + "/", ""), *sys.argv]),
        "cpu": cpu(), "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "requests": args.requests,
        "request": {"model": "fashion-mnist", "sampler": "dpmpp_2m", "steps": args.steps,
                    "images": args.n, "gif": True},
        "runs": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{args.requests} concurrent /generate requests ({args.n} images, dpmpp_2m "
          f"{args.steps} steps, GIF) on {result['cpu']['name']} "
          f"({', '.join(result['cpu']['flags'])}):\n")
    print("| concurrency | burst wall-clock | latency median / p95 / max | complete | errors | "
          "answers after | server RSS before | peak RSS in burst | VmHWM |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        lat = r["latency_s"]
        print(f"| {r['concurrency']} | {r['wall_s']:.1f} s | {lat['median']:.1f} / {lat['p95']:.1f}"
              f" / {lat['max']:.1f} s | {r['complete']}/{args.requests} | {len(r['errors'])} | "
              f"{'yes' if r['answered_after'] else 'NO'} | {r['rss_before_burst_mb']:.0f} MB | "
              f"{r['rss_peak_during_burst_mb']:.0f} MB | {r['vmhwm_mb']:.0f} MB |")
    print(f"\n{result['command']}; load average {result['load_average_before']} before, "
          f"{result['load_average_after']} after. Wrote {args.out}")


if __name__ == "__main__":
    main()
