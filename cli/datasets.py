"""``psiq datasets``: generate synthetic customer tables for demos and benchmarks."""

from __future__ import annotations

import json

import click

from .common import handles_errors

__all__ = ["datasets_group"]


@click.group("datasets")
def datasets_group() -> None:
    """Synthetic bank customer tables (fake data only)."""


@datasets_group.command("generate")
@handles_errors
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--rows", type=click.IntRange(min=0), default=10_000, show_default=True, help="Customers per bank.")
@click.option("--overlap", type=click.FloatRange(0.0, 1.0), default=0.3, show_default=True,
              help="Fraction of customers in both banks.")
@click.option("--seed", type=int, default=20261123, show_default=True, help="Random seed (same seed, same files).")
@click.option("--blacklist-rows", type=click.IntRange(min=0), default=20_000, show_default=True,
              help="Entries in blacklist.csv.")
@click.option("--rows-b", type=click.IntRange(min=0), default=None, help="Customers in bank B (default: --rows).")
def generate_command(out_dir: str, rows: int, overlap: float, seed: int, blacklist_rows: int,
                     rows_b: int | None) -> None:
    """Write bank_a.csv, bank_b.csv, blacklist.csv and expected.json into --out."""
    from psiq_datasets.generate import generate

    from psi.errors import InputError

    try:
        summary = generate(out_dir, rows, overlap, seed, blacklist_rows, rows_b=rows_b)
    except OSError as err:
        raise InputError(f"cannot write the tables to {out_dir}: {err.strerror or err}") from None
    click.echo(json.dumps(summary, indent=2, ensure_ascii=False))
