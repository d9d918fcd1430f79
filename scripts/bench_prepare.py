"""Benchmark (not a test) of corpus preparation: throughput against the tokenizers library's own
ceiling, peak memory against corpus size, and whether the training pipeline keeps up.

  python scripts/bench_prepare.py --workdir=/tmp/bench_prepare [--size_mb=200] [--small_mb=20]
      [--skip_train_bench]

1. Makes a synthetic multi-document corpus (seeded; Zipf-distributed pseudo-words, documents of
   ~0.3-4 KB, JSONL shards of `--shard_mb`), `--size_mb` in all; the first `--small_mb` of
   shards is the small corpus.
2. Trains a byte-level BPE (`--vocab` ids) on a 10 MB sample and saves it as tokenizer.json, so
   the throughput figures are tokenization, not BPE training (its time is reported apart).
3. Raw ceiling: `Tokenizer.encode_batch` over the same documents in one process, 1 thread
   (TOKENIZERS_PARALLELISM=false) and with the library's own threads.
4. `prepare` (tokenizer_json = that file) with 1 and 2 workers, each in a fresh process:
   wall time of each pass, tokens/s of the tokenizing pass, peak RSS of the preparing process
   and of its workers; then the same for the small corpus (RSS of 20 MB vs 200 MB).
   On a shared host the load changes between measurements minutes apart, so the ratios to the
   ceiling are also measured in `--rounds` alternating rounds on the small corpus (ceiling,
   1 worker, 2 workers back to back; medians), with the load average of each.
5. `pregate-bench` on configs/shakespeare_bpe.py and on a two-source mixture of it:
   data_vs_step_demand (pipeline tokens/s over the step's demand).
Prints one JSON object per measurement and a summary; figures go to docs/benchmarks.md (data).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_corpus(out: Path, size_mb: int, shard_mb: int, seed: int = 0) -> list[Path]:
  """JSONL shards of synthetic documents, deterministic for (size_mb, shard_mb, seed)."""
  import numpy as np
  out.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  syll = np.array(["ka", "lo", "mi", "ne", "tho", "ra", "us", "en", "qu", "ist", "ar", "de",
                   "pho", "ly", "sa", "ver", "in", "ot", "ble", "ch", "an", "es"])
  n_words = 30_000
  lengths = rng.integers(1, 5, n_words)
  words = np.array(["".join(rng.choice(syll, k)) for k in lengths])
  punct = np.array([" ", " ", " ", " ", " ", " ", ", ", ". ", ".\n", "; ", "? ", "! "])
  shards, i = [], 0
  while sum(p.stat().st_size for p in shards) < size_mb * 1e6:
    path = out / f"shard-{i:03d}.jsonl"
    if not path.exists():
      tmp = path.with_suffix(".tmp")
      with open(tmp, "w", encoding="utf-8") as f:
        written = 0
        while written < shard_mb * 1e6:
          n = int(rng.integers(50, 700))
          ids = np.minimum(rng.zipf(1.2, n), n_words) - 1
          seps = punct[rng.integers(0, len(punct), n)]
          text = "".join(np.char.add(words[ids], seps)).strip().capitalize()
          line = json.dumps({"text": text}, ensure_ascii=False) + "\n"
          f.write(line)
          written += len(line.encode())
      tmp.rename(path)
    shards.append(path)
    i += 1
  return shards


def iter_docs(paths: list[Path]):
  for p in paths:
    with open(p, encoding="utf-8") as f:
      for line in f:
        yield json.loads(line)["text"]


def raw_ceiling(tokenizer_json: Path, paths: list[Path], threads: str) -> dict:
  """encode_batch over every document (1 MB batches), timing only the library call."""
  os.environ["TOKENIZERS_PARALLELISM"] = threads
  from tokenizers import Tokenizer
  tok = Tokenizer.from_file(str(tokenizer_json))
  tokens, spent, cpu, batch, chars = 0, 0.0, 0.0, [], 0

  def encode(batch: list[str]) -> int:
    nonlocal spent, cpu
    t, c = time.perf_counter(), time.process_time()
    enc = tok.encode_batch(batch, add_special_tokens=False)
    spent += time.perf_counter() - t
    cpu += time.process_time() - c
    return sum(len(e.ids) for e in enc)

  for doc in iter_docs(paths):
    batch.append(doc)
    chars += len(doc)
    if chars >= 1 << 20:
      tokens += encode(batch)
      batch, chars = [], 0
  if batch:
    tokens += encode(batch)
  return {"what": f"raw encode_batch, TOKENIZERS_PARALLELISM={threads}", "tokens": tokens,
          "seconds": spent, "cpu_s": cpu, "tokens_per_s": tokens / spent,
          "tokens_per_cpu_s": tokens / cpu}


def _spin(_: int) -> float:
  t, c = time.perf_counter(), time.process_time()
  x = 0
  for i in range(20_000_000):
    x += i
  return (time.perf_counter() - t) / (time.process_time() - c)


def spin_check() -> float:
  """How much of 2 cores this host gives 2 busy processes right now (shared machines)."""
  from concurrent.futures import ProcessPoolExecutor
  with ProcessPoolExecutor(2) as pool:
    return max(pool.map(_spin, range(2)))


def child_prepare(args: argparse.Namespace) -> None:
  """In a fresh process: prepare once, timing each pass; print JSON."""
  from train.data import prepare
  from train.data.spec import DataSpec
  times = {}
  real_scan, real_fill = prepare.scan, prepare._fill

  def timed(name, fn):
    def run(*a, **kw):
      t = time.perf_counter()
      try:
        return fn(*a, **kw)
      finally:
        times[name] = time.perf_counter() - t
    return run

  prepare.scan, prepare._fill = timed("scan_s", real_scan), timed("tokenize_s", real_fill)
  spec = DataSpec(tokenizer="bpe", tokenizer_json=args.tokenizer_json, val_fraction=0.01)
  t = time.perf_counter()
  m = prepare.prepare(args.inputs, args.out, spec=spec, workers=args.workers)
  wall = time.perf_counter() - t
  tokens = m["train_tokens"] + m["val_tokens"]
  own, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
  cpu = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
  print(json.dumps({
      "what": f"prepare, {args.workers} worker(s)", "inputs_mb": m["source_bytes"] / 1e6,
      "documents": m["documents"], "tokens": tokens, "wall_s": wall, **times,
      "tokenize_tokens_per_s": tokens / times["tokenize_s"], "end_to_end_tokens_per_s":
      tokens / wall, "cpu_s": cpu, "tokens_per_cpu_s": tokens / cpu,
      "main_cpu_s": own.ru_utime + own.ru_stime, "loadavg_1min": os.getloadavg()[0],
      "peak_rss_mb_main": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
      "peak_rss_mb_workers": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
      "train_sha256": m["train_sha256"]}))


def run_prepare(paths: list[Path], tokenizer_json: Path, out: Path, workers: int) -> dict:
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  cmd = [sys.executable, __file__, "--child", f"--inputs={','.join(map(str, paths))}",
         f"--tokenizer_json={tokenizer_json}", f"--out={out}", f"--workers={workers}"]
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
  if proc.returncode:
    raise SystemExit(proc.stderr[-3000:])
  shutil.rmtree(out, ignore_errors=True)  # 2 bytes/token: keep the disk free between runs
  return json.loads(proc.stdout.strip().splitlines()[-1])


def train_bench(config: str, workdir: Path, steps: int, extra: list[str] = ()) -> dict:
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  cmd = [sys.executable, "-m", "train.cli.bench", f"--config={config}", f"--steps={steps}",
         "--warmup=5", "--saves=1", *extra]
  t = time.perf_counter()
  proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, check=False)
  if proc.returncode:
    raise SystemExit(proc.stderr[-3000:])
  keys = ("data_tokens_per_s", "tokens_per_s", "data_vs_step_demand", "step_ms")
  got = {k: float(re.search(rf"^{k}\s+([\d.,e+-]+)$", proc.stdout, re.M).group(1)
                  .replace(",", "")) for k in keys}
  return {"what": f"pregate-bench {Path(config).name}", "wall_s": time.perf_counter() - t,
          **got}


MIXTURE = '''from ml_collections import ConfigDict

from configs import shakespeare_bpe


def get_config(arg=None):
  c = shakespeare_bpe.get_config()
  c.data.sources = ConfigDict({{"early": {{"corpus": "{a}", "weight": 0.6}},
                               "late": {{"corpus": "{b}", "weight": 0.4}}}})
  c.data.data_dir = "{root}/mixture_data"
  return c
'''


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--workdir", default="/tmp/bench_prepare")
  ap.add_argument("--size_mb", type=int, default=200)
  ap.add_argument("--small_mb", type=int, default=20)
  ap.add_argument("--shard_mb", type=int, default=20)
  ap.add_argument("--vocab", type=int, default=8192)
  ap.add_argument("--train_steps", type=int, default=60, help="pregate-bench timed steps")
  ap.add_argument("--skip_train_bench", action="store_true")
  ap.add_argument("--rounds", type=int, default=3, help="alternating small-corpus rounds")
  ap.add_argument("--skip_big", action="store_true", help="only the rounds (and train bench)")
  ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  ap.add_argument("--inputs", help=argparse.SUPPRESS)
  ap.add_argument("--tokenizer_json", help=argparse.SUPPRESS)
  ap.add_argument("--out", help=argparse.SUPPRESS)
  ap.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.child:
    child_prepare(args)
    return
  root = Path(args.workdir)
  results = []

  def report(r: dict) -> None:
    results.append(r)
    print(json.dumps(r), flush=True)

  t = time.perf_counter()
  shards = make_corpus(root / "corpus", args.size_mb, args.shard_mb)
  small = shards[:max(1, args.small_mb // args.shard_mb)]
  report({"what": "corpus", "shards": len(shards), "mb": sum(p.stat().st_size for p in shards)
          / 1e6, "small_mb": sum(p.stat().st_size for p in small) / 1e6,
          "seconds": time.perf_counter() - t})
  tokenizer_json = root / "tokenizer.json"
  if not tokenizer_json.exists():
    from train.data import bpe
    sample = []
    for doc in iter_docs(shards):
      sample.append(doc)
      if sum(map(len, sample)) > 10e6:
        break
    t = time.perf_counter()
    bpe.train(iter(sample), args.vocab, "<|endoftext|>").hf.save(str(tokenizer_json))
    report({"what": f"BPE training on {sum(map(len, sample)) / 1e6:.1f}M chars",
            "vocab": args.vocab, "seconds": time.perf_counter() - t})
  report({"what": "two CPU-bound processes at once: wall / CPU of each (1.0 = a core each)",
          "ratio": spin_check()})
  if not args.skip_big:
    ceiling = raw_ceiling(tokenizer_json, shards, "false")
    report(ceiling)
    report(raw_ceiling(tokenizer_json, shards, "true"))
    big = {w: run_prepare(shards, tokenizer_json, root / f"prepared_w{w}", w) for w in (1, 2)}
    for w, r in big.items():
      r["per_core_vs_ceiling"] = r["tokenize_tokens_per_s"] / w / ceiling["tokens_per_s"]
      report(r)
    assert big[1]["train_sha256"] == big[2]["train_sha256"], "1 vs 2 workers differ"
    small_r = run_prepare(small, tokenizer_json, root / "prepared_small", 2)
    report(small_r)
    report({"what": "peak RSS, 2 workers: big / small corpus",
            "main": big[2]["peak_rss_mb_main"] / small_r["peak_rss_mb_main"],
            "workers": big[2]["peak_rss_mb_workers"] / small_r["peak_rss_mb_workers"]})
  rows = []
  for r in range(args.rounds):
    ceil_r = raw_ceiling(tokenizer_json, small, "false")
    w1 = run_prepare(small, tokenizer_json, root / f"round{r}_w1", 1)
    w2 = run_prepare(small, tokenizer_json, root / f"round{r}_w2", 2)
    rows.append({"round": r, "ceiling": ceil_r["tokens_per_s"],
                 "w1": w1["tokenize_tokens_per_s"], "w2": w2["tokenize_tokens_per_s"],
                 "w1_vs_ceiling": w1["tokenize_tokens_per_s"] / ceil_r["tokens_per_s"],
                 "w2_per_core_vs_ceiling": w2["tokenize_tokens_per_s"] / 2
                 / ceil_r["tokens_per_s"],
                 # Per CPU-second (main + workers, the whole preparation incl. scan and
                 # spawning): "per core used", whatever else shares the host.
                 "w1_per_cpu_s_vs_ceiling": w1["tokens_per_cpu_s"] / ceil_r["tokens_per_cpu_s"],
                 "w2_per_cpu_s_vs_ceiling": w2["tokens_per_cpu_s"] / ceil_r["tokens_per_cpu_s"],
                 "w2_wall_speedup_vs_w1": w2["tokenize_tokens_per_s"] / w1["tokenize_tokens_per_s"],
                 "loadavg_1min": os.getloadavg()[0]})
    report({"what": "alternating round, small corpus", **rows[-1]})
  if rows:
    import statistics
    report({"what": f"median of {len(rows)} rounds", **{
        k: statistics.median(r[k] for r in rows) for k in rows[0] if k != "round"}})
  if not args.skip_train_bench:
    report(train_bench("configs/shakespeare_bpe.py", root, args.train_steps))
    text = (REPO / "data" / "tinyshakespeare.txt").read_text("utf-8")
    cut = text.index("\n\n", len(text) // 2)
    (root / "early.txt").write_text(text[:cut])
    (root / "late.txt").write_text(text[cut + 2:])
    cfg = root / "shakespeare_bpe_mixture.py"
    cfg.write_text(MIXTURE.format(a=root / "early.txt", b=root / "late.txt", root=root))
    report(train_bench(str(cfg), root, args.train_steps))
  name = "results_rounds.json" if args.skip_big else "results.json"
  (root / name).write_text(json.dumps(results, indent=2))
  print(f"wrote {root / name}")


if __name__ == "__main__":
  main()
