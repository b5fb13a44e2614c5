"""The `fleet` commands: set up and inspect the central ledger (PostgreSQL).

Thin: parse, call cgman.fleet.db, print. `cgman agent --ledger-url` ships rows to it and
`cgman usage --ledger-url` bills from it; docs/fleet.md has the whole setup.
"""

from __future__ import annotations

import typer

from .params import print_json

fleet_app = typer.Typer(help="The fleet ledger in PostgreSQL: every node's bill of record in one place.",
                        no_args_is_help=True)

URL_HELP = "postgresql://USER@HOST/DBNAME (or ?host=/socket/dir); the password belongs in ~/.pgpass."


@fleet_app.command("init")
def init(ledger_url: str = typer.Option(..., "--ledger-url", envvar="CGMAN_LEDGER_ADMIN_URL",
                                        help=f"The database, as its owner: {URL_HELP}")) -> None:
    """Create the cgman schema, or migrate it forward, and grant the two roles.

    Run once per database (and again after upgrading cgman: it applies only the
    missing migrations, in one transaction). Creates the group roles cgman_agent
    (may only insert rows and register nodes) and cgman_billing (may only read);
    make each node's login role a member of cgman_agent and the billing one of
    cgman_billing (docs/fleet.md).
    """
    from cgman import __version__
    from ..fleet.db import describe, init as do_init
    from ..fleet.schema import VERSION
    applied = do_init(ledger_url, __version__)
    if applied:
        typer.echo(f"{describe(ledger_url)}: applied schema version(s) {', '.join(map(str, applied))}; "
                   f"now at version {VERSION}; roles cgman_agent and cgman_billing granted")
    else:
        typer.echo(f"{describe(ledger_url)}: schema already at version {VERSION}; grants refreshed")


@fleet_app.command("nodes")
def nodes(ledger_url: str = typer.Option(..., "--ledger-url", help=f"The database: {URL_HELP}"),
          as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """The nodes that ship to the fleet ledger: rows stored and the newest row's end time."""
    from ..fleet.db import node_summary
    rows = node_summary(ledger_url)
    if as_json:
        print_json([r._asdict() for r in rows])
        return
    typer.echo(f"{'NODE':<24} {'HOST':<24} {'ROWS':>10}  LAST ENDED")
    for r in rows:
        typer.echo(f"{r.node:<24} {r.hostname:<24} {r.rows:>10}  {r.last_ended or '-'}")
