"""``edgeprune prune``, and the pruning options ``edgeprune compile`` shares with it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from edgeprune.cli.common import (NONE, DeviceArgs, FiniteFloat, FiniteFloatOrNone, ModelArgs, backend_option,
                                  collect_options,
                                  device_options, json_option, keep_layer_option, model_options, out_option,
                                  profile_budget_option, seed_option, tables_option, target_option)
from edgeprune.cli.output import log, out, print_json, table
from edgeprune.prune.importance import IMPORTANCE
from edgeprune.prune.options import DEFAULT_MAX_ACCURACY_DROP, DEFAULT_STRATEGY, DEPTH_MODES
from edgeprune.prune.recipe import CONV_LR, DEFAULT_DISTILL, DEFAULT_FINETUNE_EPOCHS, DEFAULT_LR
from edgeprune.prune.strategies import STRATEGIES

if TYPE_CHECKING:
    from edgeprune.prune.options import PruneOptions

MODEL_SUFFIXES = (".pt", ".pth", ".ts", ".pt2")
PRUNE_KEYS = ("latency_budget", "latency_ms", "strategy", "importance", "max_accuracy_drop", "keep_layers",
              "finetune_epochs", "distill", "lr", "gradual_steps", "seed", "tables", "profile_budget", "allow_budget_miss",
              "depth")


def _default_importances() -> str:
    """Each strategy's default importance, read off the strategy classes (one place)."""
    by: dict[str, list[str]] = {}
    for name in STRATEGIES.names():
        by.setdefault(STRATEGIES.get(name).default_importance, []).append(name)
    return ", ".join(f"{imp} for {' / '.join(names)}" for imp, names in by.items())


def prune_options(required: bool) -> Callable[[Callable], Callable]:
    """The pruning options, shared by ``prune`` (``required``: a budget must be given) and
    ``compile`` (pruning only when a budget is given) -> ``prune: PruneOptions | None``.
    The latency table follows the command's ``--backend``."""
    return collect_options(
        [
            click.option("--latency-budget", "latency_budget", type=FiniteFloat(0, 1, min_open=True),
                         metavar="FRACTION",
                         help="Prune to this fraction of the original model's latency on the target (e.g. 0.5)."),
            click.option("--latency-ms", "latency_ms", type=FiniteFloat(0, min_open=True), metavar="MS",
                         help="Prune to this latency in milliseconds on the target."),
            click.option("--strategy", type=click.Choice(STRATEGIES.names()), default=DEFAULT_STRATEGY,
                         show_default=True,
                         help="Search: knapsack (HALP-like), greedy (NetAdapt-like), genetic, uniform (baseline)."),
            click.option("--importance", type=click.Choice(IMPORTANCE.names()),
                         help=f"Channel importance (default: {_default_importances()})."),
            click.option("--max-accuracy-drop", type=FiniteFloatOrNone(0), metavar="POINTS|none",
                         help="Fail (exit code 8, results kept) if validation accuracy drops more than this many "
                              f"points. Default: {DEFAULT_MAX_ACCURACY_DROP:g} when the model has validation data (--data, zoo "
                              "models); none: no limit."),
            keep_layer_option("Leave this layer (or every layer under this name) unpruned; repeatable."),
            click.option("--finetune-epochs", type=FiniteFloat(0), default=DEFAULT_FINETUNE_EPOCHS, show_default=True,
                         metavar="EPOCHS", help="Fine-tuning epochs after pruning (0 = none)."),
            click.option("--distill/--no-distill", default=DEFAULT_DISTILL, show_default=True,
                         help="Fine-tune with knowledge distillation from the original model."),
            click.option("--lr", type=FiniteFloat(0, min_open=True), metavar="LR",
                         help=f"Fine-tuning learning rate (Adam). Default: {CONV_LR:g} for convolutional nets, "
                              f"{DEFAULT_LR:g} for transformers, RNNs and MLPs."),
            click.option("--gradual-steps", type=click.IntRange(1), default=1, show_default=True, metavar="N",
                         help="Prune in this many steps (shrinking budget), fine-tuning after each."),
            seed_option("Seed of every random choice (reproducible)."),
            tables_option(),
            profile_budget_option(),
            click.option("--allow-budget-miss", is_flag=True,
                         help="The pruned model is timed end to end and searched again when it misses the budget "
                              "by more than 5 %; if it still misses, the run fails (exit code 8, results kept) "
                              "unless this flag is given."),
            click.option("--depth", type=click.Choice(DEPTH_MODES), default="off", show_default=True,
                         help="Depth pruning (needs --data): only = remove whole residual blocks until the budget "
                              "is met; auto = remove the blocks that cost less accuracy per ms than channels, "
                              "then prune widths."),
        ],
        into="prune",
        build=lambda v, kwargs: _prune_settings(v, kwargs.get("backend"), required),
        keys=PRUNE_KEYS,
    )


def _prune_settings(v: dict[str, Any], backend: str | None, required: bool) -> PruneOptions | None:
    """``PruneOptions`` from the parsed options, or None when no budget was given and
    pruning is optional (``compile``)."""
    from edgeprune.prune.options import PruneOptions

    if v["latency_budget"] is not None and v["latency_ms"] is not None:
        raise click.UsageError("give either --latency-budget or --latency-ms, not both")
    if v["latency_budget"] is None and v["latency_ms"] is None:
        if required:
            raise click.UsageError("say how fast: --latency-budget FRACTION (e.g. 0.5) or --latency-ms MS")
        tuned = [f"--{k.replace('_', '-')}" for k in ("max_accuracy_drop", "lr", "allow_budget_miss")
                 if v[k]] + \
                ["--keep-layer"] * bool(v["keep_layers"]) + ["--importance"] * bool(v["importance"]) + \
                ["--depth"] * (v["depth"] != "off")
        if tuned:
            raise click.UsageError(f"{', '.join(tuned)} only apply when pruning: add --latency-budget or --latency-ms")
        return None
    off = v["max_accuracy_drop"] == NONE
    return PruneOptions(
        budget=v["latency_budget"], latency_ms=v["latency_ms"], strategy=v["strategy"], importance=v["importance"],
        max_accuracy_drop=None if off else v["max_accuracy_drop"], accuracy_gate=not off,
        keep_layers=tuple(v["keep_layers"]),
        finetune_epochs=v["finetune_epochs"], distill=v["distill"], lr=v["lr"], gradual_steps=v["gradual_steps"],
        seed=v["seed"],
        backend=None if backend in (None, "auto") else backend, tables=v["tables"],
        profile_budget_s=float(v["profile_budget"]), allow_budget_miss=bool(v["allow_budget_miss"]),
        depth=v["depth"],
    )


def print_prune_result(result, as_json: bool, saved=None) -> None:
    if as_json:
        print_json({**result.to_dict(), "files": saved.to_dict() if saved else None})
        return
    rows = [[name, o, k, f"{k / o:.0%}" if o else None] for name, (o, k) in result.channels.items()]
    table(f"Pruned with {result.strategy} / {result.importance}", ["layer", "channels", "kept", "ratio"], rows,
          right={1, 2, 3})
    r = result
    out.print(f"latency (predicted): {r.original_predicted_ms:.3f} ms -> {r.predicted_latency_ms:.3f} ms "
              f"(budget {r.budget_ms:.3f} ms, {r.predicted_latency_ms / r.original_predicted_ms:.2f}x)", highlight=False)
    out.print(f"params: {r.params_before:,} -> {r.params_after:,}; MACs: {r.macs_before / 1e6:.2f} M -> "
              f"{r.macs_after / 1e6:.2f} M", highlight=False)
    if r.accuracy_before is not None:
        out.print(f"accuracy: {r.accuracy_before:.2f}% -> {r.accuracy_after:.2f}% "
                  f"(after search, before fine-tuning: {r.accuracy_after_search:.2f}%)", highlight=False)
    for n in r.notes:
        out.print(f"note: {n}", highlight=False)
    if saved is not None:
        out.print(f"wrote {saved.model} ({saved.format}), {saved.onnx}, {saved.record}", highlight=False)
        for line in saved.how_to_load():
            out.print(f"  load — {line}", highlight=False)


def _check_out(ctx, param, value: Path) -> Path:
    if value.suffix not in MODEL_SUFFIXES:
        raise click.BadParameter(f"must end in {', '.join(MODEL_SUFFIXES)} (.pt2 = torch.export, others TorchScript)")
    return value


@click.command("prune")
@model_options
@target_option
@backend_option(auto="the target's preferred (first) backend.",
                help="Backend whose latency table guides pruning.")
@device_options(help="Device the latency table is measured on (see `edgeprune devices`).")
@prune_options(required=True)
@out_option("Pruned model file; .onnx and .json are written next to it.", "out_path", file=True,
            default=Path("pruned.pt"), callback=_check_out)
@json_option()
def prune_cmd(model: ModelArgs, target_name: str, backend: str, devices: DeviceArgs, prune: PruneOptions,
              out_path: Path, as_json: bool) -> None:
    """Prune a model to a latency budget on a target, fine-tune it, and save it.

    \b
    Writes OUT (TorchScript, or torch.export for .pt2), OUT.onnx and OUT.json.
    Example: edgeprune prune --model zoo:digits-cnn --target host --latency-budget 0.5 --out pruned.pt
    """
    from edgeprune.config.targets import get_target
    from edgeprune.flows.preflight import check_run
    from edgeprune.flows.prune import prune_model
    from edgeprune.prune.options import PruneGateError
    from edgeprune.prune.save import save_pruned

    target = get_target(target_name)
    device = devices.one()
    # before the model is loaded: an unwritable --out used to fail after profiling, pruning and fine-tuning
    check_run(target, [device], (prune.backend or target.backends[0],), files={"--out": out_path}, prune=prune,
              lut=True, log=log)
    loaded = model.load()
    try:
        result = prune_model(loaded, target, device, prune, log=log)
    except PruneGateError as exc:  # keep what was produced, then fail
        saved = save_pruned(loaded, exc.result, out_path)
        print_prune_result(exc.result, as_json, saved)
        raise
    saved = save_pruned(loaded, result, out_path)
    print_prune_result(result, as_json, saved)
