"""The `husai` command (also `python -m husai`); MLproject has one entry point per subcommand.

    husai train-base --preset quick          # train (or reuse) the base model, register husai-base
    husai extract --config my.yaml           # base model + cached, logged activations
    husai trial --preset quick               # one SAE recipe x seeds: metrics, stability, registry
    husai sweep --sweep sweeps/quick.yaml    # Ray Tune + Optuna over recipes, the best confirmed
    husai gate --version 3 --policy gates/default.yaml   # promote (champion) or block a version
    husai pipeline --sweep sweeps/quick.yaml --policy gates/default.yaml   # all of it, end to end
    husai report --sweep-run RUN_ID          # a sweep's report: plots and the trials table
    husai export --version 3 --out DIR       # a registered SAE as a plain sae-lens folder
    husai external --version 3 --harness saebench   # an official benchmark on a registered SAE
    husai --version

Bad input (config, checkpoint, cache entry) exits 2 with one line naming the file and field,
before any compute and before any run is created.

The commands import what they run inside their own function: `husai --help` takes 0.3 s, while
importing the stages (torch, TransformerLens, sae-lens) costs about 13 s and MLflow about 1 s,
which a command that needs neither should not pay. Everything else in HUSAI imports at the top.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from husai import console, names
from husai.cli_args import build_parser
from husai.config.experiment import ExperimentConfig
from husai.config.loading import resolve, with_activation_source
from husai.core.errors import InputError, ServiceUnavailable

EXIT_BAD_INPUT = 2
EXIT_UNAVAILABLE = 1  # a Ray head (or other service) that cannot be reached
EXIT_INTERRUPTED = 130


def cmd_train_base(cfg: ExperimentConfig, args: argparse.Namespace) -> int:
    from husai.registry.tracking import Tracker
    from husai.run import stages

    tracker = Tracker(args.tracking_uri or None)
    handle = stages.base_model(cfg, tracker)
    tracker.link_env_run(handle.links())
    console.print_base(handle)
    print(console.ui_hint(tracker.uri, tracker.experiment_id(names.EXPERIMENT_BASE)))
    return 0


def cmd_extract(cfg: ExperimentConfig, args: argparse.Namespace) -> int:
    from husai.model.activations import check_hook
    from husai.registry.tracking import Tracker
    from husai.run import stages

    if cfg.activations.source == "transformer_lens":
        from husai.model.lm_source import plan
        from husai.run.lm_stages import lm_activations

        p = plan(cfg.activations)  # every check before the store or any forward pass
        tracker = Tracker(args.tracking_uri or None)
        lm = lm_activations(cfg, tracker, p)
        tracker.link_env_run({names.TAG_LINK_ACTIVATIONS_RUN: lm.run_id})
        console.print_acts(lm)
        print(console.ui_hint(tracker.uri, tracker.experiment_id(names.EXPERIMENT_ACTIVATIONS)))
        return 0
    check_hook(cfg)
    tracker = Tracker(args.tracking_uri or None)
    base = stages.base_model(cfg, tracker)
    console.print_base(base)
    acts = stages.activations(cfg, base, tracker)
    tracker.link_env_run({**base.links(), names.TAG_LINK_ACTIVATIONS_RUN: acts.run_id})
    console.print_acts(acts)
    print(console.ui_hint(tracker.uri, tracker.experiment_id(names.EXPERIMENT_ACTIVATIONS)))
    return 0


def cmd_trial(cfg: ExperimentConfig, args: argparse.Namespace) -> int:
    from husai.run.trial_stages import trial, trial_inputs

    cfg = with_activation_source(cfg, args.activation_key, args.activations_file)
    inputs = trial_inputs(cfg, args.tracking_uri or None, args.allow_memorised == "yes")
    tracker = inputs.tracker
    # The same config hash, activations and metric version are found, not trained again:
    # training is deterministic, so the result would be the same run again.
    done = trial(cfg, inputs, rerun=args.rerun == "yes")
    tracker.link_env_run({names.TAG_TRIAL_RUN_ID: done.run_id})
    run = tracker.get_run(done.run_id)
    if done.result is None or done.recorded is None:
        console.print_recorded(run)
    else:
        r = done.result
        representative = (r.representative_seed, r.representative_reason)
        console.print_summary(cfg, inputs.acts.key, r.seconds, done.recorded, representative, run)
    if args.alias:
        # A plain trial moves no alias by itself: `candidate` is what a sweep (or this flag) names.
        version = None if done.recorded is None else done.recorded.sae_version
        if version is None:
            version = tracker.find_model_version(
                names.SAE_MODEL_NAME, {names.TAG_TRIAL_RUN_ID: done.run_id}
            )
        holds = None
        if version is not None:
            holds = tracker.set_alias(names.SAE_MODEL_NAME, args.alias, version)
        console.print_alias(args.alias, version, holds)
    experiment = tracker.experiment_id(names.EXPERIMENT_SWEEP_PREFIX + cfg.name)
    print(console.ui_hint(tracker.uri, experiment))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from husai.registry.tracking import Tracker
    from husai.run.sweep.driver import run_sweep

    out = run_sweep(
        Path(args.sweep),
        smoke=args.smoke == "yes",
        tracking_uri=args.tracking_uri or None,
        ray_address=args.ray_address or None,
        resume=args.resume == "yes",
        rerun=args.rerun == "yes",
        allow_memorised=args.allow_memorised == "yes",
    )
    tracker = Tracker(args.tracking_uri or None)
    links = {names.TAG_LINK_SWEEP_RUN: out.sweep_run_id}
    if out.sae_version is not None:
        links[names.TAG_LINK_SAE_VERSION] = str(out.sae_version)
    tracker.link_env_run(links)
    console.print_sweep(out, tracker.child_runs(out.sweep_run_id))
    print(console.ui_hint(tracker.uri, tracker.get_run(out.sweep_run_id).experiment_id))
    return 0


EXIT_GATE_BLOCKED = 2
EXIT_GATE_ERROR = 1


def cmd_gate(args: argparse.Namespace) -> int:
    """Exit 0 on pass, 2 on block, 1 when there is nothing to judge or the policy is bad."""
    from husai.registry.gate import load_policy
    from husai.registry.gate_apply import run_gate
    from husai.registry.tracking import Tracker

    try:
        if bool(args.version) == bool(args.alias):
            raise InputError("give exactly one of --version N and --alias NAME")
        policy = load_policy(args.policy)
        tracker = Tracker(args.tracking_uri or None)
        out = run_gate(
            tracker,
            policy,
            version=args.version or None,
            alias=args.alias or None,
            dry_run=args.dry_run == "yes",
        )
    except InputError as e:
        console.error("gate", e)
        return EXIT_GATE_ERROR
    links = {names.TAG_LINK_SAE_VERSION: str(out.decision.version)}
    if out.gate_run_id is not None:
        links[names.TAG_LINK_GATE_RUN] = out.gate_run_id
    tracker.link_env_run(links)
    console.print_gate(out)
    return 0 if out.decision.pass_all else EXIT_GATE_BLOCKED


def cmd_pipeline(args: argparse.Namespace) -> int:
    from husai.registry.tracking import Tracker
    from husai.run.pipeline import StepFailed, run_pipeline

    try:
        res = run_pipeline(
            Path(args.sweep),
            Path(args.policy),
            smoke=args.smoke == "yes",
            tracking_uri=args.tracking_uri or None,
            ray_address=args.ray_address or None,
            allow_memorised=args.allow_memorised == "yes",
        )
    except (StepFailed, InputError) as e:
        # 1, not 2: exit 2 means "the gate blocked" (a result); this is a failure.
        console.error("pipeline", e)
        return EXIT_GATE_ERROR
    tracker = Tracker(args.tracking_uri or None)
    links = {names.TAG_LINK_SWEEP_RUN: res.sweep.sweep_run_id}
    links[names.TAG_LINK_SAE_VERSION] = str(res.gate.decision.version)
    if res.gate.gate_run_id is not None:
        links[names.TAG_LINK_GATE_RUN] = res.gate.gate_run_id
    tracker.link_env_run(links)
    experiment = tracker.get_run(res.sweep.sweep_run_id).experiment_id
    print(res.summary(tracker.uri, experiment))
    return 0 if res.gate.decision.pass_all else EXIT_GATE_BLOCKED


def cmd_report(args: argparse.Namespace) -> int:
    from husai.registry.tracking import Tracker
    from husai.report.sweep_report import log_sweep_report

    tracker = Tracker(args.tracking_uri or None)
    if tracker.run_kind(args.sweep_run) != names.KIND_SWEEP:
        raise InputError(f"--sweep-run: {args.sweep_run!r} is not a sweep run in {tracker.uri}")
    rep = log_sweep_report(tracker, args.sweep_run)
    tracker.link_env_run({names.TAG_LINK_SWEEP_RUN: args.sweep_run})
    console.print_report(args.sweep_run, rep.n_trials, rep.n_finished, rep.files)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from husai.registry.export import export_sae
    from husai.registry.tracking import Tracker

    tracker = Tracker(args.tracking_uri or None)
    done = export_sae(tracker, args.version, Path(args.out))
    tracker.link_env_run({names.TAG_LINK_SAE_VERSION: str(done.version)})
    console.print_export(done.version, done.trial_run_id, done.out)
    return 0


def cmd_external(args: argparse.Namespace) -> int:
    from husai.registry.tracking import Tracker
    from husai.run.external import ExternalRequest, HarnessFailed, run_external

    req = ExternalRequest(
        args.version, args.harness, args.model, tuple(filter(None, args.evals.split(","))),
        args.python or sys.executable, Path(args.harness_path) if args.harness_path else None,
        args.dataset, args.device, args.dtype, args.batch_size,
    )  # fmt: skip
    tracker = Tracker(args.tracking_uri or None)
    try:
        done = run_external(tracker, req)
    except HarnessFailed as e:
        console.error("external", e)
        return 1
    tracker.link_env_run({names.TAG_LINK_SAE_VERSION: done.version})
    console.print_external(done.harness, done.version, done.run_id, done.metrics, done.skipped)
    return 0


COMMANDS: dict[str, Callable[[ExperimentConfig, argparse.Namespace], int]] = {
    "train-base": cmd_train_base,
    "extract": cmd_extract,
    "trial": cmd_trial,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "sweep":
            return cmd_sweep(args)
        if args.command == "export":
            return cmd_export(args)
        if args.command == "external":
            return cmd_external(args)
        if args.command == "gate":
            return cmd_gate(args)
        if args.command == "pipeline":
            return cmd_pipeline(args)
        if args.command == "report":
            return cmd_report(args)
        cfg = resolve(Path(args.config) if args.config else None, args.preset or None)
        return COMMANDS[args.command](cfg, args)
    except InputError as e:
        console.error(args.command, e)
        return EXIT_BAD_INPUT
    except ServiceUnavailable as e:
        console.error(args.command, e)
        return EXIT_UNAVAILABLE
    except KeyboardInterrupt as e:
        console.interrupted(args.command, e)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
