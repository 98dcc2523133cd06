"""`saerec` command line: every command reads the same settings as the server."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from app.config import Settings, get_settings
from app.db import create_db_engine, upgrade_schema
from app.observability import configure_logging, get_logger

log = get_logger("saerec.cli")


def _settings() -> Settings:
    try:
        settings = get_settings()
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise click.ClickException(f"invalid configuration:\n{exc}") from None
    configure_logging(settings.log_level, settings.log_json)
    return settings


def _migrated_engine(settings: Settings):  # noqa: ANN202 - Engine, imported lazily
    engine = create_db_engine(settings)
    if settings.auto_migrate:
        upgrade_schema(engine)
    return engine


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """saerec: movie recommendations from a stacked autoencoder."""


@cli.command()
def migrate() -> None:
    """Bring the database to the current schema (alembic upgrade head)."""
    settings = _settings()
    engine = create_db_engine(settings)
    upgrade_schema(engine)
    engine.dispose()
    click.echo("database schema is up to date")


@cli.command("import-movielens")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--progress/--no-progress", default=True, help="show a progress bar")
def import_movielens_command(path: Path, progress: bool) -> None:
    """Load a MovieLens folder or .zip (ml-100k, ml-1m, ml-10m, ml-latest, ml-20m, ml-25m)."""
    from app.services.movielens import MovieLensFormatError, import_movielens

    settings = _settings()
    engine = _migrated_engine(settings)
    try:
        report = import_movielens(engine, path, progress=progress)
    except MovieLensFormatError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        engine.dispose()
    click.echo(report.summary())


@cli.command()
@click.argument("name")
@click.option(
    "--dest", type=click.Path(path_type=Path), default=Path("var/data"), show_default=True
)
def download(name: str, dest: Path) -> None:
    """Fetch a MovieLens archive from GroupLens (needs internet)."""
    from app.services.movielens import DownloadError, download_movielens

    try:
        folder = download_movielens(name, dest)
    except (ValueError, DownloadError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"downloaded {name} into {folder}")


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64))
def serve(host: str, port: int, workers: int) -> None:
    """Run the API with uvicorn."""
    import uvicorn

    settings = _settings()
    _migrated_engine(settings).dispose()
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=settings.log_level.lower(),
        access_log=False,
    )


def main() -> None:
    try:
        cli(standalone_mode=True)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
