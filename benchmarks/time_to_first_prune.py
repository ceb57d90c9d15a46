"""Time to the first pruned artifact on a new model: a device model built once vs full per-model tables.

Issue 19's benchmark. Per backend (ONNX Runtime, OpenVINO) on this host:

0. the device model is built once (``edgeprune device-model build --target host
   --backend B --time-budget T``) into its own cache, and its build time is reported on
   its own (``--device-model-cache DIR`` reuses one: a rerun does not rebuild);
1. for each model - the zoo's resnet18 (3x224x224), mobilenetv2 (3x224x224), digits-cnn
   (1x32x32, trained on scikit-learn digits, its data comes with the zoo entry), and the
   user-style networks of ``benchmarks/user_models.py`` (a MobileNetV3-like net at
   3x120x120 and a RegNet-like one at 3x80x80, sizes off the device model's suite, given as
   ``module:factory``, random weights: latency does not depend on them) - side by side:

   * **device-model mode**: a fresh ``$EDGEPRUNE_CACHE`` holding a copy of the device
     model and no point of any model, so no model profits from another's points;
   * **full-table mode**: an empty ``$EDGEPRUNE_CACHE`` (today's per-model table);

   each mode runs, through the ``edgeprune`` CLI as a user would:
   ``profile --tables M`` (wall, ``profile_seconds``, ``points_measured``), then
   ``prune --latency-budget 0.5 --tables M`` (wall; the fraction of the original the
   pruned artifact was *measured* at, whether the budget was met, the exit code); time to
   first prune = both walls. Then ``profile --tables M --validate --variants N``:
   prediction error over N random pruned variants measured end to end.

The pruned artifact is also measured by this script ("recheck": the original and the
pruned ONNX timed in interleaved rounds through the library's ``prepare`` + ``measure``,
on the same backend), so the budget verdict does not rest on the tool grading itself.
Fine-tuning is off by default (``--finetune-epochs 0``): it costs the same in both modes
and is not latency work. The zoo models' trained weights are shared between the fresh
caches (``models/`` is linked to the usual one): weights are not latency points.

Aims (issue 19): profiling per new model >= 5x less time than full tables and <= 5 min for
resnet18; prediction error on unseen models median <= 3 %, >= 95 % within +-10 %; every
budget met by the measured artifact within 5 % (or a non-zero exit); device-model build
<= 30 min per backend. The host is shared and noisy: ratios measured side by side in one
run are the figure, not absolute seconds.

Raw JSON per (model, backend, mode) goes to ``--out`` as soon as it finishes (a stopped run
keeps them, a rerun skips them unless ``--redo``); the summary at the end.

Usage: python benchmarks/time_to_first_prune.py [--quick] [--skip-full | --skip-model] ... (see --help)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from statistics import median

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.user_models import USER_MODELS  # noqa: E402
from edgeprune.paths import cache_dir  # noqa: E402

ZOO_MODELS = ("resnet18", "mobilenetv2", "digits-cnn")
MODES = ("model", "full")
BUDGET, TOLERANCE = 0.5, 0.05
PRUNE_EXIT = 8  # PruneError's exit code (docs/cli.md)
CLI = [sys.executable, "-m", "edgeprune.cli"]
NOT_COPIED = ("models", "locks", "tuning")  # what a device-model copy leaves out (never latency points)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def slug(name: str) -> str:
    return name.replace(":", "_").replace("/", "_")


def model_args(name: str) -> list[str]:
    """--model (and --input-shape) for a benchmark model name, or a spec given as is."""
    if name in USER_MODELS:
        spec, shape = USER_MODELS[name]
        return ["--model", spec, "--input-shape", "x".join(map(str, shape))]
    return ["--model", name if ":" in name or name.endswith(".onnx") else f"zoo:{name}"]


def pick(doc: dict | None, *names: str):
    """The first of ``names`` found in ``doc`` or one level below it (the CLI's JSON keeps
    growing keys: read them defensively, so a missing one is None, not a crash)."""
    levels = [doc] + [v for v in doc.values() if isinstance(v, dict)] if isinstance(doc, dict) else []
    return next((d[n] for d in levels for n in names if d.get(n) is not None), None)


class Edgeprune:
    """The ``edgeprune`` CLI in subprocesses (argument lists, never a shell string), one log
    file per command, a timeout that stops the command's whole process group."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._help: dict[str, str] = {}

    def help(self, *verb: str) -> str:
        if verb not in self._help:
            cp = subprocess.run(CLI + [*verb, "--help"], capture_output=True, text=True, timeout=120)
            self._help[verb] = cp.stdout if cp.returncode == 0 else ""
        return self._help[verb]

    def has(self, verb: tuple[str, ...], flag: str | None = None) -> bool:
        return bool(self.help(*verb)) and (flag is None or flag in self.help(*verb))

    def run(self, args: list[str], cache: Path, logs: Path, name: str,
            timeout_s: float | None = None) -> tuple[dict, str]:
        """(record, stdout) of one command with ``$EDGEPRUNE_CACHE=cache``, nothing recorded in a
        results database; its output in ``logs/name.stdout|stderr``."""
        env = os.environ | {"EDGEPRUNE_CACHE": str(cache), "EDGEPRUNE_DB": "none",
                            "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
        logs.mkdir(parents=True, exist_ok=True)
        out_f, err_f = logs / f"{name}.stdout", logs / f"{name}.stderr"
        log(f"  $ edgeprune {' '.join(args)}   (log: {err_f})")
        t0 = time.monotonic()
        with out_f.open("w") as so, err_f.open("w") as se:
            proc = subprocess.Popen(CLI + args, stdout=so, stderr=se, env=env, cwd=logs, start_new_session=True)
            timed_out = False
            try:
                rc = proc.wait(timeout=timeout_s or self.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out, rc = True, self._stop(proc, signal.SIGTERM)
            except KeyboardInterrupt:  # the child is in its own session: pass Ctrl-C on, let it keep its points
                self._stop(proc, signal.SIGINT)
                raise
        wall = time.monotonic() - t0
        stdout, stderr = out_f.read_text(errors="replace"), err_f.read_text(errors="replace")
        rec = {"argv": ["edgeprune", *args], "rc": rc, "wall_s": round(wall, 2), "timed_out": timed_out,
               "stderr_tail": stderr[-3000:] if rc != 0 else stderr[-600:], "log": str(err_f)}
        log(f"  -> rc {rc}{' (timed out)' if timed_out else ''} in {wall:.0f} s")
        return rec, stdout

    @staticmethod
    def _stop(proc: subprocess.Popen, sig: int) -> int:
        """Signal the process group we started (edgeprune stops its runners on SIGINT /
        SIGTERM and keeps what it measured), SIGKILL it if it has not ended in 60 s."""
        try:
            os.killpg(proc.pid, sig)
            return proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            return proc.wait()
        except ProcessLookupError:
            return proc.wait()


def read_json(path: Path | None, fallback_stdout: str | None = None) -> dict | None:
    """The JSON document a command wrote to ``path``, else the one it printed on stdout."""
    texts = [path.read_text()] if path is not None and path.is_file() else []
    for text in texts + [fallback_stdout] * bool(fallback_stdout):
        try:
            doc = json.loads(text)
            return doc if isinstance(doc, dict) else {"value": doc}
        except json.JSONDecodeError:
            continue
    return None


# --------------------------------------------------------------------------- device model
def build_device_model(ep: Edgeprune, backend: str, args) -> dict:
    """Build the device model of ``backend`` into ``args.dm_root`` (or reuse a build this
    script recorded there, or the one ``--device-model-cache`` names)."""
    from edgeprune.durations import parse_duration

    record = args.dm_root / f"build-{backend}.json"
    earlier = read_json(record)
    if args.device_model_cache is not None or (earlier and earlier.get("rc") == 0 and not args.rebuild):
        rec = earlier or {"note": f"device model given in {args.dm_root}; its build time is unknown here"}
        rec["reused"] = True
        log(f"{backend}: reusing the device model in {args.dm_root}")
    else:
        log(f"{backend}: building the device model (--time-budget {args.time_budget}) ...")
        cmd = ["device-model", "build", "--target", "host", "--backend", backend, "--time-budget", args.time_budget]
        cmd += ["--suite-size", args.suite_size] if args.suite_size else []
        cmd += ["--json"] if ep.has(("device-model", "build"), "--json") else []
        rec, stdout = ep.run(cmd, args.dm_root, args.work / "logs", f"device-model-build-{backend}",
                             timeout_s=max(ep.timeout_s, 2 * parse_duration(args.time_budget) + 900))
        resumed = earlier.get("build_seconds", 0.0) if earlier and earlier.get("rc") != 0 else 0.0
        rec["build_seconds"] = rec["wall_s"] + resumed  # a resumed build measured only the rest
        rec["build"] = read_json(None, stdout)
        args.dm_root.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(rec, indent=1))
    show = ["device-model", "show", "--target", "host", "--backend", backend]
    show += ["--json"] * ep.has(("device-model", "show"), "--json")
    _, stdout = ep.run(show, args.dm_root, args.work / "logs", f"device-model-show-{backend}", timeout_s=300)
    rec |= {"show": read_json(None, stdout) or stdout[-4000:], "ok": rec.get("rc", 0) == 0}
    return rec


def fresh_cache(path: Path, seed_from: Path | None, models_dir: Path) -> Path:
    """An ``$EDGEPRUNE_CACHE`` for one (model, backend, mode): empty, or a copy of the device
    model's cache; ``models/`` links to the shared zoo weights."""
    if path.exists():
        shutil.rmtree(path)  # a row stopped half-way starts again from nothing
    if seed_from is not None:
        shutil.copytree(seed_from, path, ignore=lambda d, names: [n for n in names if Path(d) == seed_from and (
            n in NOT_COPIED or n.startswith("build-"))])
    path.mkdir(parents=True, exist_ok=True)
    models_dir.mkdir(parents=True, exist_ok=True)
    (path / "models").symlink_to(models_dir, target_is_directory=True)
    return path


# --------------------------------------------------------------------------- one row
def run_row(ep: Edgeprune, name: str, backend: str, mode: str, original_onnx: Path, args) -> dict:
    """profile -> prune at 0.5 -> profile --validate for one (model, backend, mode)."""
    run_dir = args.work / "runs" / f"{slug(name)}--{backend}--{mode}"
    cache = fresh_cache(run_dir / "cache", args.dm_root if mode == "model" else None, args.models_dir)
    logs = run_dir / "logs"
    common = model_args(name) + ["--target", "host", "--backend", backend]

    def opts(verb: str) -> list[str]:  # flags this edgeprune knows (today's has neither: it is the full mode)
        tables = ["--tables", mode] if ep.has((verb,), "--tables") else []
        budget = (["--profile-budget", args.profile_budget]
                  if args.profile_budget and mode == "model" and ep.has((verb,), "--profile-budget") else [])
        return tables + budget

    row: dict = {"model": name, "backend": backend, "mode": mode, "argv_extra": opts("profile"), "commands": {}}

    rec, _ = ep.run(["profile", *common, *opts("profile"), "--out", str(run_dir / "profile.json")], cache, logs,
                    "1-profile")
    row["commands"]["profile"] = rec
    prof = read_json(run_dir / "profile.json") if rec["rc"] == 0 else None
    row["profile"] = {"wall_s": rec["wall_s"], "rc": rec["rc"],
                      "profile_seconds": pick(prof, "profile_seconds", "seconds"),
                      "points_measured": pick(prof, "points_measured"), "points_used": pick(prof, "points_used"),
                      "keys_missing": [k for k in ("profile_seconds", "points_measured") if pick(prof, k) is None]}
    if rec["rc"] != 0:
        return row

    pruned = run_dir / "pruned.pt"
    prune = ["prune", *common, *opts("prune"), "--latency-budget", str(BUDGET), "--finetune-epochs",
             str(args.finetune_epochs), "--out", str(pruned), "--json"]
    rec, stdout = ep.run(prune, cache, logs, "2-prune")
    row["commands"]["prune"] = rec
    doc = read_json(pruned.with_suffix(".json"), stdout)
    orig_pred, pred = pick(doc, "original_predicted_latency_ms"), pick(doc, "predicted_latency_ms")
    check = (doc or {}).get("budget_check") or {}  # flows.budget.BudgetOutcome.to_dict, when the prune has one
    met = pick(doc, "budget_met")
    row["prune"] = {
        "wall_s": rec["wall_s"], "rc": rec["rc"], "exit_is_prune_failure": rec["rc"] == PRUNE_EXIT,
        "refused_unreachable": rec["rc"] == PRUNE_EXIT and "unreachable" in rec["stderr_tail"],
        "measured_fraction": pick(doc, "measured_fraction"), "budget_met": check.get("met") if met is None else met,
        "budget_attempts": pick(doc, "budget_attempts") or check.get("searches"),
        "points_confirmed": check.get("points_confirmed"), "budget_check": check or None,
        "points_measured": pick(doc, "points_measured"), "profile_seconds": pick(doc, "profile_seconds"),
        "predicted_fraction": pred / orig_pred if pred and orig_pred else None,
        "search_seconds": pick(doc, "search_seconds"), "notes": pick(doc, "notes"),
        "keys_missing": [k for k in ("measured_fraction", "budget_check") if pick(doc, k) is None],
    }
    row["time_to_first_prune_s"] = round(row["profile"]["wall_s"] + rec["wall_s"], 2)
    onnx = pruned.with_suffix(".onnx")
    if args.recheck and onnx.is_file():
        try:
            row["recheck"] = recheck(original_onnx, onnx, backend, run_dir / "recheck", args.recheck)
        except Exception as exc:  # a failed recheck is reported, the row is kept
            row["recheck"] = {"error": f"{type(exc).__name__}: {exc}"}

    val = run_dir / "validate.json"
    rec, _ = ep.run(["profile", *common, *opts("profile"), "--validate", "--variants", str(args.variants),
                     "--seed", "0", "--out", str(val)], cache, logs, "3-validate")
    row["commands"]["validate"] = rec
    v = read_json(val) if rec["rc"] == 0 else None
    row["validate"] = {"wall_s": rec["wall_s"], "rc": rec["rc"], "variants": len(v.get("variants") or []) if v else 0,
                       **{k: (v or {}).get(k) for k in ("median_abs_pct_error", "p95_abs_pct_error", "within_10pct",
                                                         "drift", "recalibrated_drift")},
                       "points_measured": pick((v or {}).get("profile"), "points_measured")}
    return row


def recheck(original: Path, pruned: Path, backend: str, work: Path, rounds: int) -> dict:
    """The pruned artifact's latency as a fraction of the original's, both timed in the same
    interleaved rounds through the library (``prepare`` + ``measure``, as compile does): the
    median of the per-round ratios (and the ratio of the two fast states, as compile picks)."""
    from edgeprune.bench.measure import measure
    from edgeprune.bench.rounds import fast_state_ms
    from edgeprune.bench.settings import BenchSettings
    from edgeprune.compile.prepare import PrepareOptions, Variant, prepare
    from edgeprune.config.devices import LOCAL
    from edgeprune.config.targets import get_target
    from edgeprune.models.spec import load_model

    quiet = lambda m: None  # noqa: E731
    paths = {"original": original, "pruned": pruned}
    variants = [Variant(model=load_model(str(p), log=quiet), prefix=f"{k}:", onnx_name=f"{k}.onnx", quantize=False)
                for k, p in paths.items()]
    settings = BenchSettings(warmup=10, min_runs=10 * rounds, min_time_s=0.3 * rounds, max_time_s=30.0 * rounds,
                             rounds=rounds)
    prepared = prepare(variants, get_target("host"), work, PrepareOptions(backends=(backend,), bench=settings), quiet)
    m = measure(prepared.bundle, [LOCAL], rounds=rounds, timeout_s=settings.timeout_s, log=quiet)[LOCAL.name]
    if m.error:
        raise RuntimeError(m.error)
    rm = {k: m.round_medians[f"{k}:{backend}"] for k in paths}
    ratios = [p / o for p, o in zip(rm["pruned"], rm["original"])]  # round by round: the host's drift cancels
    return {"original_ms": median(rm["original"]), "pruned_ms": median(rm["pruned"]), "fraction": median(ratios),
            "round_ratios": [round(r, 4) for r in ratios],
            "fast_state_fraction": fast_state_ms(rm["pruned"]) / fast_state_ms(rm["original"])}


# --------------------------------------------------------------------------- summary
def fmt(x, spec: str = ".0f", scale: float = 1) -> str:
    return "–" if x is None else format(x * scale, spec)


def derived(rows: dict) -> dict:
    """The figures the table and the aims use, from one model's rows of one backend."""
    out: dict = {}
    for mode, r in rows.items():
        p, pr, v = r.get("profile", {}), r.get("prune", {}), r.get("validate", {})
        secs, pts = p.get("profile_seconds"), p.get("points_measured")  # + what prune measured, if it says
        secs = None if secs is None else secs + (pr.get("profile_seconds") or 0.0)
        extra = pr.get("points_measured") if pr.get("points_measured") is not None else pr.get("points_confirmed")
        pts = None if pts is None else pts + (extra or 0)
        frac, re_frac = pr.get("measured_fraction"), (r.get("recheck") or {}).get("fraction")
        known = [x for x in (frac, re_frac) if x is not None]  # the tool's and this script's measurement
        met = True if pr.get("exit_is_prune_failure") else (
            all(x <= BUDGET * (1 + TOLERANCE) for x in known) if known else None)
        out[mode] = {"profile_s": secs, "points": pts, "ttfp_s": r.get("time_to_first_prune_s"), "fraction": frac,
                     "recheck": re_frac, "budget_ok": met, "rc": pr.get("rc"),
                     "median": v.get("median_abs_pct_error"), "within": v.get("within_10pct"),
                     "variants": v.get("variants")}
    m, f = out.get("model", {}), out.get("full", {})
    out["ratio"] = f["profile_s"] / m["profile_s"] if m.get("profile_s") and f.get("profile_s") else None
    return out


def render(results: dict, builds: dict, backends: list[str], models: list[str]) -> str:
    lines = ["# Time to first prune: device model vs full per-model tables (host)", ""]
    for b in backends:
        bs, info = builds.get(b, {}).get("build_seconds"), builds.get(b, {}).get("build") or {}
        lines += [f"## {b}", "", f"device-model build: {fmt(bs)} s wall" + " (reused)" * bool(builds.get(b, {}).get(
            "reused")) + (f"; {info.get('measured')} points measured in {fmt(info.get('seconds'))} s, "
                          f"{info.get('remaining')} left, stopped by the budget: {info.get('stopped_by_budget')}"
                          if info else ""), "",
                  "| model | profile s (model / full / ratio) | points (model / full) | time to first prune s "
                  "(model / full) | fraction at 0.5 model: tool / recheck | full: tool / recheck | median err % "
                  "(model / full) | within ±10 % (model / full) |", "|---|---|---|---|---|---|---|---|"]
        aims: dict[str, list[bool | None]] = {"ratio": [], "resnet": [], "median": [], "within": [], "budget": []}
        for name in models:
            rows = results.get(b, {}).get(name)
            if not rows:
                continue
            d = derived(rows)
            m, f = d.get("model", {}), d.get("full", {})
            lines.append(
                f"| {name} | {fmt(m.get('profile_s'))} / {fmt(f.get('profile_s'))} / {fmt(d['ratio'], '.1f')}x | "
                f"{fmt(m.get('points'), 'd')} / {fmt(f.get('points'), 'd')} | {fmt(m.get('ttfp_s'))} / "
                f"{fmt(f.get('ttfp_s'))} | {_frac(m)} | {_frac(f)} | {fmt(m.get('median'), '.2f')} / "
                f"{fmt(f.get('median'), '.2f')} | {fmt(m.get('within'), '.0f', 100)} / "
                f"{fmt(f.get('within'), '.0f', 100)} |")
            if m:
                aims["ratio"].append(None if d["ratio"] is None else d["ratio"] >= 5)
                if name == "resnet18":
                    aims["resnet"].append(None if m.get("profile_s") is None else m["profile_s"] <= 300)
                aims["median"].append(None if m.get("median") is None else m["median"] <= 3.0)
                aims["within"].append(None if m.get("within") is None else m["within"] >= 0.95)
            aims["budget"] += [x.get("budget_ok") for x in (m, f) if x]
        aims["build"] = [None if bs is None else bs <= 1800]
        lines += ["", "aims: " + "; ".join(f"{label} {verdict(aims[k])}" for k, label in (
            ("ratio", "profiling >= 5x less"), ("resnet", "resnet18 <= 5 min"), ("median", "median <= 3 %"),
            ("within", ">= 95 % within ±10 %"), ("budget", "budgets met within 5 % or non-zero exit"),
            ("build", "device-model build <= 30 min"))), ""]
    lines += ["profile s: time measuring for the model (profile_seconds of `profile`, + prune's if it reports one);",
              "points: points measured for it (+ the points prune confirmed); fraction: pruned / original latency,",
              "measured (tool: the prune JSON's measured_fraction; recheck: this script, interleaved rounds); errors",
              "over the validation variants measured end to end. The host is shared and noisy: read the ratios."]
    return "\n".join(lines)


def _frac(x: dict) -> str:
    s = f"{fmt(x.get('fraction'), '.2f')} / {fmt(x.get('recheck'), '.2f')}"
    return s + (f" (rc {x['rc']})" if x.get("rc") else "")


def verdict(checks: list[bool | None]) -> str:
    known = [c for c in checks if c is not None]
    word = "n/a" if not known else "met" if all(known) else f"MISSED ({known.count(False)}/{len(known)})"
    return word + (f", {len(checks) - len(known)} unknown" if known and len(known) < len(checks) else "")


# --------------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", default="onnxruntime,openvino")
    ap.add_argument("--models", default=None, help="zoo names, the user-style names of benchmarks/user_models.py, "
                    f"or model specs (default: {','.join([*ZOO_MODELS, *USER_MODELS])})")
    side = ap.add_mutually_exclusive_group()
    side.add_argument("--skip-full", action="store_true", help="device-model side only")
    side.add_argument("--skip-model", action="store_true",
                      help="full-table side only (e.g. before `edgeprune device-model` exists)")
    ap.add_argument("--time-budget", default="30m", help="device-model build budget (edgeprune duration)")
    ap.add_argument("--suite-size", default=None, help="device-model build's --suite-size (--quick: tiny)")
    ap.add_argument("--profile-budget", default=None, help="--profile-budget, device-model side (default: edgeprune's)")
    ap.add_argument("--variants", type=int, default=20, help="random pruned variants validated end to end")
    ap.add_argument("--finetune-epochs", default="0", help="prune's --finetune-epochs (default 0: latency work only)")
    ap.add_argument("--recheck", type=int, default=7, metavar="ROUNDS",
                    help="rounds of this script's own original-vs-pruned measurement (0: off)")
    ap.add_argument("--device-model-cache", type=Path, default=None,
                    help="an $EDGEPRUNE_CACHE holding only built device models: reused, not rebuilt")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the device model even if this script built one")
    ap.add_argument("--redo", action="store_true", help="rerun rows whose JSON is already in --out")
    ap.add_argument("--timeout", type=float, default=7200.0, help="seconds per edgeprune command")
    ap.add_argument("--out", type=Path, default=None,
                    help="raw JSON + summary (default benchmarks/results/<date>/time_to_first_prune)")
    ap.add_argument("--work-dir", type=Path, default=Path("out/bench-time-to-first-prune"),
                    help="caches, pruned models and command logs")
    ap.add_argument("--quick", action="store_true", help="smoke run: digits-cnn, 5 variants, small budgets")
    args = ap.parse_args()
    if args.quick:
        args.models, args.variants, args.time_budget = args.models or "digits-cnn", min(args.variants, 5), "3m"
        args.profile_budget, args.suite_size = args.profile_budget or "1m", args.suite_size or "tiny"
        args.recheck = min(args.recheck, 3)
    args.models = args.models or ",".join([*ZOO_MODELS, *USER_MODELS])
    args.out = args.out or REPO / "benchmarks" / "results" / datetime.date.today().isoformat() / "time_to_first_prune"
    args.work = args.work_dir.resolve()
    args.dm_root = (args.device_model_cache or args.work / "device-model").resolve()
    args.models_dir = cache_dir("models")  # the zoo's trained weights, shared by every fresh cache
    backends, models = args.backends.split(","), args.models.split(",")
    modes = [m for m in MODES if not (m == "model" and args.skip_model) and not (m == "full" and args.skip_full)]
    for d in (args.out, args.work):
        d.mkdir(parents=True, exist_ok=True)
    ep = Edgeprune(args.timeout)
    if "model" in modes and not (ep.has(("device-model", "build")) and ep.has(("profile",), "--tables")):
        sys.exit("this edgeprune has no `device-model build` or no `profile --tables` yet; "
                 "hint: run the full-table side alone with --skip-model")
    t_all = time.monotonic()
    builds: dict = {}
    results: dict = {b: {} for b in backends}
    originals = export_originals(models, args.work / "originals") if args.recheck else {}
    total, done = len(backends) * len(models) * len(modes), 0
    for b in backends:
        if "model" in modes:
            builds[b] = build_device_model(ep, b, args)
            (args.out / f"device-model--{b}.json").write_text(json.dumps(builds[b], indent=1, default=str))
        for name in models:
            for mode in modes:
                done += 1
                if mode == "model" and not builds[b]["ok"]:
                    log(f"[{done}/{total}] {name} / {b} / model: skipped, the device-model build failed")
                    continue
                path = args.out / f"{slug(name)}--{b}--{mode}.json"
                if path.is_file() and not args.redo:
                    row = json.loads(path.read_text())
                    log(f"[{done}/{total}] {name} / {b} / {mode}: kept from {path}")
                else:
                    log(f"[{done}/{total}] {name} / {b} / {mode} ({time.monotonic() - t_all:.0f} s so far) ...")
                    row = run_row(ep, name, b, mode, originals.get(name, Path("/nonexistent")), args)
                    path.write_text(json.dumps(row, indent=1, default=str))
                results[b].setdefault(name, {})[mode] = row
                log(f"[{done}/{total}] {name} / {b} / {mode}: {one_line(row)}")
    text = render(results, builds, backends, models)
    summary = {"derived": {b: {n: derived(r) for n, r in per.items()} for b, per in results.items()},
               "device_model": builds, "args": vars(args), "seconds": round(time.monotonic() - t_all, 1)}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    (args.out / "summary.md").write_text(text + "\n")
    print(text)
    print(f"\n(total {time.monotonic() - t_all:.0f} s; JSON and Markdown in {args.out}, logs in {args.work})")
    return 0


def export_originals(models: list[str], where: Path) -> dict[str, Path]:
    """Each model's unpruned ONNX, for the recheck; before any timed command, so loading a
    zoo model that trains on first use (digits-cnn) is never inside a measured wall time."""
    from edgeprune.compile.export import export_onnx
    from edgeprune.models.spec import load_model

    out = {}
    for name in models:
        args = model_args(name)
        shape = [tuple(int(d) for d in args[3].split("x"))] if len(args) > 2 else None
        path = where / f"{slug(name)}.onnx"
        if not path.is_file():
            log(f"{name}: exporting the original to ONNX (for the recheck) ...")
            export_onnx(load_model(args[1], input_shape=shape, log=log), path)
        out[name] = path
    return out


def one_line(row: dict) -> str:
    p, pr, v, rc = row.get("profile", {}), row.get("prune", {}), row.get("validate", {}), row.get("recheck") or {}
    return (f"profile {fmt(p.get('wall_s'))} s wall ({fmt(p.get('points_measured'), 'd')} points, rc {p.get('rc')}); "
            f"prune {fmt(pr.get('wall_s'))} s (rc {pr.get('rc')}, measured fraction "
            f"{fmt(pr.get('measured_fraction'), '.2f')}, recheck {fmt(rc.get('fraction'), '.2f')}); "
            f"validation median {fmt(v.get('median_abs_pct_error'), '.2f')} %, within ±10 % "
            f"{fmt(v.get('within_10pct'), '.0f', 100)} % over {v.get('variants', 0)} variants")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit("stopped: every finished row is in --out (a rerun skips them)")
