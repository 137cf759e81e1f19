"""The ``peft-studio`` command line (also what the MLproject entry points run).

A mistake a user can make ends in one line on stderr naming the problem and the fix, with exit code 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import functools
import logging
import sys
from dataclasses import MISSING, fields

import click

from .config import ConfigError, TrainConfig, usable_path


def _user_errors() -> tuple[type[BaseException], ...]:
    """Error types that mean "the user asked for something that cannot work": shown as one line.

    Only from modules already imported (one never imported cannot have raised), so that reporting a bad
    setting does not first import MLflow for ``tracking.analyze``."""
    where = (("notify.delivery.channels", "ChannelError"), ("tracking.analyze", "AnalysisError"),
             ("tracking.compare", "CompareError"))
    return (ConfigError, *(getattr(sys.modules[m], name) for m, name in where if m in sys.modules))


def friendly_errors(func):
    """Turn user errors into one line and exit 2; unexpected errors keep their traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        ctx = click.get_current_context()
        debug = (ctx.find_root().params or {}).get("debug", False)
        try:
            if ctx.command.name == "train":  # settings and local data first: named in a second, MLflow untouched
                config = TrainConfig.from_strings(kwargs)
                from notify.delivery import load_channels

                load_channels(config.notify)  # a bad URL named in half a second (train() loads them again to use them)
                from .data import load_text_data, resolve_data_source

                if not isinstance(resolve_data_source(config.data), str):  # a file (a hub dataset loads once, later)
                    load_text_data(config)
            if ctx.command.name in ("train", "analyze", "compare", "upload", "watch"):
                import mlflow

                from .mlflow_io import check_tracking_server

                check_tracking_server(mlflow.get_tracking_uri())
            return func(*args, **kwargs)
        except _user_errors() as exc:
            if debug:
                raise
            click.echo(f"peft-studio: error: {exc}", err=True)
            sys.exit(2)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
def main(debug: bool) -> None:
    """peft-studio: LoRA fine-tuning tracked in MLflow, with progress notifications and a quality score.

    \b
    peft-studio train                 fine-tune (built-in model and data by default), then analyze
    peft-studio analyze RUN_ID        score any MLflow run from its logged metric history
    peft-studio compare --experiment  compare runs: what goes with higher scores, what to try next
    peft-studio upload FILE           send points a run could not log (tracking store away) to it
    peft-studio notify test URLS      send a test message to each notification channel
    peft-studio watch --once          fail and report runs whose process died without a word
    """
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:  # apprise and urllib3 log webhook URLs, tokens and all
        handler.addFilter(_redact_channel_secrets)


def _redact_channel_secrets(record: logging.LogRecord) -> bool:
    """Mask notification channels' passwords and tokens in every log line (no channel loaded: nothing to do)."""
    redact = getattr(sys.modules.get("notify.delivery.redact"), "RedactSecrets", None)  # None also while it imports
    return redact().filter(record) if redact is not None else True


def _train_options(func):
    """One click option per TrainConfig field: the dataclass is the single list of settings."""
    for f in reversed(fields(TrainConfig)):
        default = f.default if f.default is not MISSING else None
        func = click.option(
            f"--{f.name.replace('_', '-')}",
            f.name,
            default=str(default),
            show_default=True,
            help=f.metadata.get("help", ""),
        )(func)
    return func


@main.command()
@_train_options
@friendly_errors
def train(**settings: str) -> None:
    """Fine-tune a model with LoRA, log it to MLflow, then score the run.

    Logs to the active MLflow run (the one `mlflow run` created) or starts one in the experiment named by
    MLFLOW_EXPERIMENT_NAME. Set MLFLOW_TRACKING_URI to use a tracking server.
    """
    config = TrainConfig.from_strings(settings)
    import os

    # MLflow's client retries a request for minutes by default; the job's own logging thread keeps and
    # resends points for as long as it takes, so a short MLflow retry lets it notice an outage in seconds.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    from notify.delivery import Notifier, load_channels

    channels = load_channels(config.notify)  # bad URLs are refused here, before anything trains
    from .train import is_main_process, run_training

    try:
        result = run_training(config, notifier=Notifier(channels, send_from_helper=True), channel_count=len(channels))
    except KeyboardInterrupt as exc:
        click.echo(f"peft-studio: {exc or 'interrupted'}; the MLflow run is marked KILLED", err=True)
        sys.exit(130)
    if is_main_process():
        if result.unsent_path is not None:
            click.echo(f"\nRun {result.run_id} trained, but the MLflow tracking store did not take all of its points: "
                       f"they are in {result.unsent_path}; when the store is back, run\n"
                       f"  peft-studio upload {result.unsent_path}", err=True)
            sys.exit(3)  # trained, but the record is incomplete: distinct from a crash (1) and a bad setting (2)
        elif result.analysis is not None:
            _print_summary(result.run_id, result.analysis)
        else:
            click.echo(f"\nRun {result.run_id} finished but could not be scored (see the warning above); "
                       "log the loss more often (--logging-steps) for an analysis.")


@main.command()
@click.argument("run_id")
@click.option("--train-loss", help="Metric holding the training loss (default: detected, e.g. loss, train_loss).")
@click.option("--eval-loss", help="Metric holding the eval loss (default: detected, e.g. eval_loss, val_loss).")
@click.option("--grad-norm", help="Metric holding the gradient norm (default: detected, e.g. grad_norm).")
@click.option("--learning-rate", help="Metric holding the learning rate (default: detected).")
@click.option("--epoch", help="Metric holding the epoch (default: epoch).")
@click.option("--dry-run", is_flag=True, help="Print the analysis without writing anything to the run.")
@click.option("--json", "as_json", is_flag=True, help="Print the analysis as JSON (analysis.json's schema).")
@friendly_errors
def analyze(run_id: str, train_loss, eval_loss, grad_norm, learning_rate, epoch, dry_run: bool, as_json: bool) -> None:
    """Score an existing MLflow run (any trainer) and write the results to it.

    Writes metric quality_score, tags quality.*, the report as the run description, and artifacts
    quality/analysis.json, quality/report.md, quality/loss_curve.png. Running it again replaces them.
    """
    from mlflow.tracking import MlflowClient

    from .analyze import analyze_run

    overrides = {role: name for role, name in (
        ("train_loss", train_loss), ("eval_loss", eval_loss), ("grad_norm", grad_norm),
        ("learning_rate", learning_rate), ("epoch", epoch)) if name}
    analysis = analyze_run(MlflowClient(), run_id, metric_names=overrides, write=not dry_run)
    if as_json:
        import json

        click.echo(json.dumps(analysis.to_dict(), indent=2))
    else:
        _print_summary(run_id, analysis, written=not dry_run)


def _print_summary(run_id: str, analysis, written: bool = True) -> None:
    click.echo(f"\nRun {run_id}: quality score {analysis.quality_score:g}/100 ({analysis.overall_assessment})")
    for name, factor in analysis.factors.items():
        points = f"{factor.points:g}/{factor.max_points}" if factor.measured else "n/a"
        click.echo(f"  {name:<15} {points:>6}  {factor.explanation}")
    if analysis.verdicts:
        verdicts = ", ".join(f"{name} {v.answer.replace('_', ' ')} ({v.confidence})"
                             for name, v in analysis.verdicts.items())
        click.echo(f"Verdicts: {verdicts}. Top concern: {analysis.top_concern.replace('_', ' ')}.")
    if analysis.suggestions:
        click.echo("Suggestions:")
        for s in analysis.suggestions[:5]:
            change = f" [{s.change}]" if s.change else ""
            click.echo(f"  - ({s.priority.value}, {s.category.value}) {s.message}{change}")
    if written:
        click.echo("Written to the run: metric quality_score, tags quality.*, artifacts quality/.")


@main.command()
@click.option("--experiment", help="Compare the runs of this experiment (by name).")
@click.option("--run-ids", default="", help="Compare these runs (comma-separated); two runs give an A/B verdict.")
@click.option("--filter", "filter_string", default="",
              help="MLflow search filter on the experiment's runs, e.g. \"params.lora_r = '8'\".")
@click.option("--no-log", is_flag=True, help="Print only; do not log a comparison run.")
@friendly_errors
def compare(experiment: str | None, run_ids: str, filter_string: str, no_log: bool) -> None:
    """Compare runs: scores and factors side by side, which hyperparameters go with higher scores, and one
    concrete configuration to try next.

    Runs without an analysis are analyzed first (and the results written back to them). The comparison is
    logged to a run of its own in the same experiment, tagged peft_studio.comparison=true, with
    comparison/summary.md, runs.csv, score_trend.png and best_worst_loss.png.
    """
    import os

    from mlflow.tracking import MlflowClient

    from .compare import compare_runs, log_comparison

    client = MlflowClient()
    own_run = os.environ.get("MLFLOW_RUN_ID")  # `mlflow run -e compare` made a run: the comparison goes there
    ids = [r.strip() for r in run_ids.split(",") if r.strip()]
    result = compare_runs(client, experiment or None, ids, filter_string, exclude_run_id=own_run)
    click.echo(result.table())
    if result.effects:
        click.echo("\nWhat goes with higher scores:")
        for effect in result.effects:
            click.echo(f"  - {effect.statement()}")
    else:
        click.echo("\nNot enough runs per value to say which hyperparameters go with higher scores "
                   "(each claim needs at least 2 runs per value).")
    if result.changes:
        click.echo("Try next: " + "; ".join(result.changes))
    if result.ab is not None:
        click.echo("\n" + result.ab.summary())
    for run_id, reason in result.unanalyzable.items():
        click.echo(f"not analyzed: {run_id}: {reason}")
    if not no_log:
        experiment_id = client.get_run(result.runs["run_id"].iloc[0]).info.experiment_id
        same_experiment = own_run and client.get_run(own_run).info.experiment_id == experiment_id
        logged = log_comparison(client, result, experiment_id, run_id=own_run if same_experiment else None)
        click.echo(f"\nLogged to comparison run {logged} (comparison/summary.md, runs.csv, plots).")


@main.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--no-analyze", is_flag=True, help="Only send the points; do not (re)analyze the run.")
@friendly_errors
def upload(path: str, no_analyze: bool) -> None:
    """Send the points a run could not log (the unsent-mlflow-RUN_ID.jsonl file the job names when the
    tracking store was away) to their run, end the run with the status it had, and analyze it.

    Safe to repeat: MLflow skips points the run already has. Point MLFLOW_TRACKING_URI at the store first.
    """

    from mlflow.tracking import MlflowClient

    from .analyze import analyze_run
    from .run_logger import upload_unsent

    if not usable_path(path, "unsent-points file").is_file():
        raise ConfigError(f"no such file: {path}; pass the unsent-mlflow-*.jsonl file the training job named")
    client = MlflowClient()
    from mlflow.exceptions import MlflowException

    try:
        result = upload_unsent(client, path)
    except (ValueError, KeyError, TypeError) as exc:  # not UTF-8, not JSON lines, not our points
        detail = str(exc) if str(exc).startswith(str(path)) else f"{path} is not an unsent-points file ({exc})"
        raise ConfigError(f"{detail}; pass the unsent-mlflow-*.jsonl file the training job named") from None
    except MlflowException as exc:
        raise ConfigError(f"the tracking store refused the points ({exc.error_code}); point MLFLOW_TRACKING_URI "
                          "at the store the run was logged to") from None
    click.echo(f"Sent {result.metrics} point(s) and {result.tags} tag(s) to run {result.run_id}.")
    if result.status and client.get_run(result.run_id).info.status == "RUNNING":
        client.set_terminated(result.run_id, result.status)
        click.echo(f"Run {result.run_id} is now {result.status}.")
    if not no_analyze:
        _print_summary(result.run_id, analyze_run(client, result.run_id))


def _positive_seconds(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if not 0 < value < float("inf"):  # also refuses nan
        raise click.BadParameter(f"must be a number of seconds > 0, got {value}")
    return value


@main.command()
@click.option("--experiment", "experiments", multiple=True,
              help="Watch this experiment (by name; repeat for more). Default: every experiment.")
@click.option("--filter", "filter_string", default="",
              help="MLflow search filter added to status = RUNNING, e.g. \"params.task = 'causal-lm'\".")
@click.option("--limit", default=300.0, show_default=True, callback=_positive_seconds,
              help="Seconds without a heartbeat after which a RUNNING run counts as dead (at least 3 of the "
                   "run's own heartbeat_seconds).")
@click.option("--once", is_flag=True, help="Look once and exit (for cron); otherwise look every --interval.")
@click.option("--interval", default=60.0, show_default=True, callback=_positive_seconds,
              help="Seconds between looks in the loop.")
@click.option("--notify", "notify_spec", default="",
              help="Where to report dead runs: what `train --notify` takes (apprise URLs or an apprise config "
                   "file). Empty: the PEFT_STUDIO_NOTIFY variable.")
@friendly_errors
def watch(experiments: tuple[str, ...], filter_string: str, limit: float, once: bool, interval: float,
          notify_spec: str) -> None:
    """Find RUNNING runs whose heartbeat stopped (the training process was killed, ran out of memory, or
    lost its machine), mark them FAILED with a tag saying since when, analyze their partial history and
    send one error notification each. Safe to run from several places: each run is reported once.
    """
    from mlflow.exceptions import MlflowException

    from notify.delivery import Notifier, load_channels

    from .watch import watch as watch_runs

    notifier = Notifier(load_channels(notify_spec))

    def show(result) -> None:
        click.echo(f"watch: {result.checked} running run(s) with a heartbeat, {len(result.silent)} silent, "
                   f"{len(result.reported)} reported by this watcher")

    try:
        watch_runs(notifier, experiments, filter_string, limit, once, interval, on_poll=show)
    except ValueError as exc:  # an unknown experiment
        raise ConfigError(str(exc)) from None
    except MlflowException as exc:  # e.g. a filter MLflow cannot parse
        raise ConfigError(f"MLflow refused the search ({exc.message.splitlines()[0]}); check --filter") from None
    except KeyboardInterrupt:
        pass
    finally:
        notifier.close()


@main.group()
def notify() -> None:
    """Check notification channels."""


@notify.command("test")
@click.argument("channels", required=False, default="")
@click.option("--timeout", default=10.0, show_default=True, callback=_positive_seconds,
              help="Seconds to wait for each channel.")
@friendly_errors
def notify_test(channels: str, timeout: float) -> None:
    """Send one test message to each channel and say, per channel, whether it went through.

    CHANNELS takes what `train --notify` takes: apprise URLs separated by spaces or commas, or the path of
    an apprise config file (YAML or text, with `tag:` routing). Empty: the PEFT_STUDIO_NOTIFY variable.

    \b
    Examples:
      peft-studio notify test 'slack://TokenA/TokenB/TokenC/#training'
      peft-studio notify test 'mailtos://user:app-password@gmail.com?to=me@example.com'
      peft-studio notify test 'dbus://'                      (Linux desktop)
      peft-studio notify test notify.yaml
    """
    from notify.delivery import load_channels, test_channels

    loaded = load_channels(channels)
    if not len(loaded):
        click.echo("peft-studio: error: no channels given: pass apprise URLs or a config file, or set "
                   "PEFT_STUDIO_NOTIFY", err=True)
        sys.exit(2)
    results = test_channels(loaded, timeout=timeout)
    for url, ok, error in results:
        click.echo(f"{'ok    ' if ok else 'FAILED'}  {url}" + (f"  ({error})" if error else ""))
    if not all(ok for _, ok, _ in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
