"""`saerec` command line: every command reads the same settings as the server.

One module just past ~500 lines: each command is a thin click wrapper around a service or
job function, and the commands share their option declarations."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from sqlalchemy import Engine

from app.config import Settings, get_settings
from app.db import create_db_engine, upgrade_schema
from app.observability import configure_logging, get_logger
from app.services.downloads import DATASETS

if TYPE_CHECKING:  # torch loads only for the commands that train or evaluate
    from app.ml.config import ModelConfig
    from app.ml.train import EpochReport, PhaseReport

log = get_logger("saerec.cli")


def _settings() -> Settings:
    try:
        settings = get_settings()
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise click.ClickException(f"invalid configuration:\n{exc}") from None
    configure_logging(settings.log_level, settings.log_json)
    return settings


def _migrated_engine(settings: Settings) -> Engine:
    engine = create_db_engine(settings)
    if settings.auto_migrate:
        upgrade_schema(engine)
    return engine


class _Group(click.Group):
    """Lists each command with its whole first sentence, wrapped, where click cuts it off."""

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit=1_000)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """saerec: movie recommendations from a stacked autoencoder."""


@cli.command()
def migrate() -> None:
    """Bring the database to the current schema (alembic upgrade head)."""
    engine = create_db_engine(_settings())
    upgrade_schema(engine)
    engine.dispose()
    click.echo("database schema is up to date")


class _ByteBar:
    """One tqdm per label for the services' byte progress: drawing is the CLI's job."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.label: str | None = None
        self.bar: Any = None

    def __call__(self, label: str, done: int, total: int | None) -> None:
        if not self.enabled:
            return
        if label != self.label:
            from tqdm import tqdm

            self.close()
            self.label = label
            self.bar = tqdm(total=total, unit="B", unit_scale=True, desc=label, file=sys.stderr)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> _ByteBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@cli.command("import-movielens")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--progress/--no-progress", default=True, help="show a progress bar")
def import_movielens_command(path: Path, progress: bool) -> None:
    """Load a MovieLens folder or .zip (ml-100k, ml-1m, ml-10m, ml-latest, ml-20m, ml-25m)."""
    from app.movielens.files import MovieLensFormatError
    from app.movielens.importer import import_movielens

    engine = _migrated_engine(_settings())
    try:
        with _ByteBar(progress) as bar:
            report = import_movielens(engine, path, on_progress=bar)
    except MovieLensFormatError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        engine.dispose()
    click.echo(report.summary())


@cli.command()
@click.argument("name", type=click.Choice(DATASETS), metavar="NAME")
@click.option(
    "--dest",
    type=click.Path(path_type=Path),
    default=Path("var/data"),
    show_default=True,
    help="folder the zip is saved and unpacked into",
)
def download(name: str, dest: Path) -> None:
    """Fetch a MovieLens archive from GroupLens (needs internet).

    NAME is one of: ml-100k (the quick start's), ml-1m, ml-10m, ml-20m, ml-25m, ml-latest,
    ml-latest-small. Offline, put the zip (or its unpacked folder) anywhere and run
    `saerec import-movielens PATH` instead.
    """
    from app.services.downloads import DownloadError, download_movielens

    try:
        with _ByteBar(enabled=True) as bar:
            folder = download_movielens(name, dest, on_progress=bar)
    except (ValueError, DownloadError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"downloaded {name} into {folder}")


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64))
def serve(host: str, port: int, workers: int) -> None:
    """Run the API with uvicorn.

    Several workers share a metrics folder, new for each start (under METRICS_DIR, else the
    system's temporary directory), so a scrape of any counts every worker's requests.
    """
    import os
    import shutil
    import tempfile

    import uvicorn

    settings = _settings()
    _migrated_engine(settings).dispose()
    metrics_dir = None
    if workers > 1:
        parent = settings.metrics_dir
        if parent is not None:
            parent.mkdir(parents=True, exist_ok=True)
        metrics_dir = tempfile.mkdtemp(prefix="saerec-metrics-", dir=parent)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # read by each worker at start
    try:
        uvicorn.run(
            "app.main:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level=settings.log_level.lower(),
            access_log=False,
        )
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _parse_overrides(pairs: tuple[str, ...]) -> dict[str, object]:
    """`--set key=value`; values are JSON when they parse as JSON (numbers, lists), else text."""
    overrides: dict[str, object] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected key=value, got {pair!r}", param_hint="--set")
        try:
            overrides[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key.strip()] = raw
    return overrides


def _model_config(preset: str | None, pairs: tuple[str, ...], epochs: int | None) -> ModelConfig:
    from app.ml.config import config_from

    overrides = _parse_overrides(pairs)
    if epochs is not None:
        overrides["epochs"] = epochs
    try:
        return config_from(preset or _settings().train_preset, **overrides)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


class _LazyBar:
    """A tqdm bar drawn at the first progress: a run that fails before it prints no bar."""

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.bar: Any = None

    def get(self) -> Any:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(file=sys.stderr, **self.options)
        return self.bar

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _training_bar(
    total: int, enabled: bool
) -> tuple[_LazyBar, Callable[[EpochReport], None], Callable[[PhaseReport], None]]:
    """One bar through every phase of training, each named as it starts."""
    lazy = _LazyBar(total=total, desc="network", unit="step", disable=not enabled)
    shown = {"phase": "network"}

    def on_epoch(report: EpochReport) -> None:
        lazy.get().set_postfix(
            loss=f"{report.train_loss:.4f}",
            rmse=f"{report.valid_rmse:.4f}",
            ndcg=f"{report.valid_ndcg:.4f}",
            refresh=False,
        )

    def on_phase(report: PhaseReport) -> None:
        bar = lazy.get()
        if report.phase != shown["phase"]:
            shown["phase"] = report.phase
            bar.set_description(report.phase, refresh=False)
            bar.set_postfix(refresh=False)
            bar.reset(total=report.steps)
        bar.total = report.steps
        bar.n = report.step
        bar.refresh()

    return lazy, on_epoch, on_phase


def _say_how_training_ended(metrics: dict[str, Any], epochs: int) -> None:
    """When early stopping ended training, say so and which epochs won."""
    run = metrics.get("epochs_run")
    if isinstance(run, int) and run < epochs:
        click.echo(
            f"early stopping after {run} of {epochs} epochs: neither head improved for the "
            f"last epochs; kept epoch {metrics.get('rank_epoch')} for ranking, "
            f"{metrics.get('rate_epoch')} for ratings",
            err=True,
        )


def _trial_bar(budget: float, enabled: bool) -> tuple[_LazyBar, Callable[[dict], None]]:
    import time

    lazy = _LazyBar(total=round(budget), desc="search", unit="s", disable=not enabled)
    started = time.monotonic()

    def on_trial(record: dict) -> None:
        bar = lazy.get()
        bar.n = min(round(time.monotonic() - started), bar.total)
        ndcg = record.get("valid_ndcg")
        bar.set_postfix(trial=record["trial"], state=record["state"], ndcg=ndcg and f"{ndcg:.4f}")
        bar.refresh()

    return lazy, on_trial


_PRESET = click.option("--preset", default=None, help="model preset (default: TRAIN_PRESET)")
_SET = click.option(
    "--set",
    "pairs",
    multiple=True,
    metavar="KEY=VALUE",
    help="override a model setting, e.g. --set hidden=[600] --set lr=0.002",
)
_EPOCHS = click.option(
    "--epochs",
    type=click.IntRange(1, 100_000),
    default=None,
    help="maximum training epochs (default: the preset's); early stopping may end sooner",
)


@cli.command()
@_PRESET
@_SET
@_EPOCHS
@click.option("--progress/--no-progress", default=True, help="show a progress bar on stderr")
@click.option(
    "--budget",
    type=click.FloatRange(0),
    default=None,
    metavar="SECONDS",
    help="search hyper-parameters on the validation split for this long first "
    "(default: TRAIN_BUDGET_SECONDS; 0 = train the preset as it is)",
)
@click.option(
    "--distributed",
    is_flag=True,
    help="data-parallel training under torchrun (DDP: gloo on CPU, nccl on GPU)",
)
@click.option(
    "--if-no-active-model",
    is_flag=True,
    help="do nothing when a model is already active (for setup scripts)",
)
def train(
    preset: str | None,
    pairs: tuple[str, ...],
    epochs: int | None,
    progress: bool,
    budget: float | None,
    distributed: bool,
    if_no_active_model: bool,
) -> None:
    """Train on the database's ratings, save a versioned model, gate and activate it."""
    from app.db import create_session_factory
    from app.jobs.training import NotEnoughDataError, preload_seconds, train_and_register
    from app.ml import distributed as ddp
    from app.services import registry

    settings = _settings()
    config = _model_config(preset, pairs, epochs)
    if distributed:
        try:
            ctx = ddp.init_from_environment(settings.device)
        except RuntimeError as exc:
            raise click.ClickException(str(exc)) from None
        engine = _migrated_engine(settings) if ctx.is_main else create_db_engine(settings)
        ddp.barrier()  # the schema is current before any rank reads
        progress = progress and ctx.is_main
    else:
        engine = _migrated_engine(settings)
    if if_no_active_model:
        with create_session_factory(engine)() as session:
            active = registry.active_version_id(session)
        if active:
            click.echo(f"model {active} is already active; not training")
            return
    budget = settings.train_budget_seconds if budget is None else budget
    bar, on_epoch, on_phase = _training_bar(config.epochs, progress and not budget)
    trials, on_trial = _trial_bar(budget, progress and bool(budget))
    try:
        outcome = train_and_register(
            settings,
            engine,
            config,
            on_epoch=on_epoch,
            on_phase=on_phase,
            on_trial=on_trial,
            budget_seconds=budget,
            preload_wait=preload_seconds(settings),
        )
    except NotEnoughDataError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        bar.close()
        trials.close()
        engine.dispose()
        if distributed:
            ddp.shutdown()
    if outcome is None:
        return  # a non-zero rank: rank 0 reports
    if progress and not budget:
        _say_how_training_ended(outcome.metrics, config.epochs)
    click.echo(
        json.dumps(
            {
                "version": outcome.version,
                "activated": outcome.activated,
                "quality_gate": outcome.gate,
                "seconds": round(outcome.seconds, 2),
                "data": outcome.data_size,
                "metrics": outcome.metrics,
                "report": outcome.report_paths,
            },
            indent=2,
            default=str,
        )
    )


@cli.command()
@click.option(
    "--base",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="training ratings of a canonical split, e.g. ml-100k/u1.base (with --test)",
)
@click.option(
    "--test",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="test ratings of that split, e.g. ml-100k/u1.test (with --base)",
)
@click.option(
    "--splits",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="a folder holding u1.base/u1.test ... u5.base/u5.test: prints the means over u1-u5",
)
@click.option(
    "--dataset",
    type=click.Path(exists=True, path_type=Path),
    help="any MovieLens folder or .zip the importer reads (ml-100k, ml-1m, ml-10m, "
    "ml-latest, ml-20m, ml-25m): docs/evaluation.md's per-user holdout, seed 7, 20 %",
)
@_PRESET
@_SET
@_EPOCHS
@click.option(
    "--baselines/--no-baselines",
    default=True,
    help="also score random, global mean, bias, popularity, EASE lambda 250 and tuned EASE",
)
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
def evaluate(
    base: Path | None,
    test: Path | None,
    splits: Path | None,
    dataset: Path | None,
    preset: str | None,
    pairs: tuple[str, ...],
    epochs: int | None,
    baselines: bool,
    as_json: bool,
) -> None:
    """Offline metrics (docs/evaluation.md protocol) of a model config and the baselines."""
    from app.ml.evaluate import evaluate_holdout, evaluate_split, evaluate_splits, format_table
    from app.movielens.files import MovieLensFormatError

    modes = (splits is not None, dataset is not None, base is not None or test is not None)
    if sum(modes) != 1 or (base is None) != (test is None):
        raise click.UsageError(
            "give exactly one of: --base and --test, --splits DIR, --dataset PATH"
        )
    config = _model_config(preset, pairs, epochs)
    if dataset is not None:
        try:
            results = evaluate_holdout(dataset, config, baselines=baselines)
        except MovieLensFormatError as exc:
            raise click.ClickException(str(exc)) from None
    elif splits is not None:
        results = evaluate_splits(splits, config, baselines=baselines)
    else:
        assert base is not None and test is not None  # checked above
        results = evaluate_split(base, test, config, baselines=baselines)
    click.echo(json.dumps(results, indent=2, default=str) if as_json else format_table(results))


@cli.command()
@click.option("--poll", default=1.0, show_default=True, help="seconds between queue checks")
def worker(poll: float) -> None:
    """Run queued training jobs (for deployments that keep training out of API processes)."""
    import signal

    from app.jobs.launcher import JobLauncher

    settings = _settings()
    engine = _migrated_engine(settings)
    launcher = JobLauncher(settings, engine, child_env=settings.as_env(), poll_seconds=poll)
    signal.signal(signal.SIGTERM, lambda *_: launcher.stop(timeout=0))
    click.echo("worker waiting for training jobs", err=True)
    launcher.run_forever()


@cli.command("run-job", hidden=True)
@click.argument("job_id")
def run_job_command(job_id: str) -> None:
    """Internal: train for one claimed job (started by a launcher as a child process)."""
    from app.jobs.runner import run_job

    settings = _settings()
    engine = create_db_engine(settings)
    try:
        run_job(settings, engine, job_id)
    finally:
        engine.dispose()


def main() -> None:
    try:
        cli(standalone_mode=True)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
