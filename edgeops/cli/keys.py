"""``edgeops keys``: make the ed25519 key pairs that sign bundles and commands."""

from __future__ import annotations

from pathlib import Path

import click

from edgeops.core.signing import generate_keypair, load_verify_key
from edgeops.core.terminal import render_pairs


@click.group()
def keys() -> None:
    """Make ed25519 key pairs: one to sign bundles (release), one to sign commands (service).

    Keep them apart: devices trust bundle keys in [model] trusted_keys and the service's command
    key in [commands] trusted_keys, and refuse a key trusted for both."""


@keys.command()
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Directory to write the key files to (created if missing).",
)
@click.option(
    "--name",
    default="edgeops",
    show_default=True,
    help="Base name: writes NAME.key (private, mode 0600) and NAME.pub (public).",
)
@click.option("--force", is_flag=True, help="Replace existing key files of the same name.")
def generate(out: Path, name: str, force: bool) -> None:
    """Write a new key pair. Keep NAME.key secret; give NAME.pub to devices and verifiers.

    A command key: `edgeops keys generate --name command`, then `edgeops serve --command-key
    command.key` and `[commands] trusted_keys = ["command.pub"]` on devices."""
    key_path, pub_path = generate_keypair(out, name, overwrite=force)
    key_id = load_verify_key(pub_path).key_id
    click.echo(
        render_pairs([("private key", key_path), ("public key", pub_path), ("key id", key_id)])
    )
