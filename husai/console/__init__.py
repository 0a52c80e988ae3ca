"""Everything HUSAI prints: what a stage found or made, a trial's numbers, a sweep's trials,
the gate's decision, the pipeline's progress and summary, one line per trial of a running sweep.

Lines are built here from the values the other layers hand over; a metric that was not computed
prints as `absent`, never as a number. Summaries fit an 80-column terminal. Callers use
`from husai import console` and `console.<function>`; the submodules split it by what is printed:
`stage_lines` (what a stage found or made, a trial's numbers), `sweeps` (a sweep's trials and
its running lines), `outcomes` (the gate, the pipeline's summary, exports) and `text` (how
values, errors and addresses are written).
"""

from husai.console.outcomes import (
    gate_table,
    pipeline_summary,
    print_export,
    print_external,
    print_gate,
    print_report,
    step_done,
    step_started,
)
from husai.console.stage_lines import (
    print_acts,
    print_alias,
    print_base,
    print_cache_repair,
    print_evals,
    print_metrics,
    print_null_acts,
    print_plain_recipe,
    print_recorded,
    print_reference,
    print_stability,
    print_summary,
)
from husai.console.sweeps import (
    bundle_done,
    print_sweep,
    print_sweep_trials,
    recipe,
    trial_done,
    trial_line,
    trial_stopped,
)
from husai.console.text import error, fmt, interrupted, say, ui_address, ui_hint

__all__ = [
    "error",
    "fmt",
    "gate_table",
    "interrupted",
    "pipeline_summary",
    "print_acts",
    "print_alias",
    "print_base",
    "print_evals",
    "print_export",
    "print_external",
    "print_gate",
    "print_metrics",
    "print_null_acts",
    "print_plain_recipe",
    "print_recorded",
    "print_reference",
    "print_cache_repair",
    "print_report",
    "print_stability",
    "print_summary",
    "print_sweep",
    "print_sweep_trials",
    "recipe",
    "say",
    "step_done",
    "step_started",
    "bundle_done",
    "trial_done",
    "trial_line",
    "trial_stopped",
    "ui_address",
    "ui_hint",
]
