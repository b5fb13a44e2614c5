"""Image commands: build, images, rmi, and the `image` group: prune, import, export.

Thin: parse, call cgman.images, render. `run --image` lives with `run` (runcmd.py).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from .common import store
from .params import JsonOpt, print_json, settings

if TYPE_CHECKING:
    from ..images.store import ImageStore
    from ..settings import Settings

image_app = typer.Typer(help="Manage images: prune, import, export.", no_args_is_help=True)


def _images(s: "Settings") -> "ImageStore":
    from ..images.store import ImageStore
    return ImageStore(store(s).state)


def live_layers(s: "Settings") -> list[tuple[str, list[str]]]:
    """(name, layer stack) of every container that is not exited (its lower dirs are in use)."""
    recs, _bad = store(s).scan()
    return [(r.name, list(r.rootfs.get("layers") or [])) for r in recs
            if r.state != "exited" and isinstance(r.rootfs, dict)]


def build(ctx: typer.Context,
          context: Path = typer.Argument(..., help="Build context: the directory COPY and ADD read from."),
          tag: str = typer.Option(..., "--tag", "-t", help="NAME:TAG of the image."),
          file: Optional[Path] = typer.Option(None, "--file", "-f", help="Dockerfile (default: CONTEXT/Dockerfile)."),
          policy: Optional[str] = typer.Option(None, "--policy", "-p", help="Group whose containers run the RUN "
                                               "steps (limits, security, billing to its tenant)."),
          build_arg: Optional[list[str]] = typer.Option(None, "--build-arg", help="K=V for an ARG; repeat."),
          network: Optional[str] = typer.Option(None, "--network", help="RUN steps' network (default: the "
                                                "group's launch.network)."),
          policy_file: Optional[list[Path]] = typer.Option(None, "--policy-file", help="Policy file(s) to find "
                                                           "the group in (default: what was applied).")) -> None:
    """Build an image from a Dockerfile; each RUN step is a container of GROUP; steps are cached.

      cgman build -t app:1 -p acme/build .
    """
    from ..images.build import Builder
    from ..images.steps import RunEnv
    from .common import host
    from .runcmd import policies_for_run
    s = settings(ctx)
    args = {}
    for kv in build_arg or []:
        k, eq, v = kv.partition("=")
        if not k:
            raise typer.BadParameter(f"{kv!r}: use K=V", param_hint="--build-arg")
        args[k] = v if eq else os.environ.get(k, "")
    if not context.is_dir():
        raise typer.BadParameter(f"{context} is not a directory", param_hint="CONTEXT")
    df = file or context / "Dockerfile"
    try:
        text = df.read_bytes()[:(1 << 20) + 1].decode()
    except (OSError, UnicodeDecodeError) as e:
        raise typer.BadParameter(f"cannot read {df}: {e}", param_hint="--file") from None
    st = store(s)
    h = host(s) if policy else None
    policies = policies_for_run(st, h.root, policy_file, s)[0] if h is not None else None
    env = RunEnv(h, st, policies, policy, network)  # type: ignore[arg-type]
    Builder(_images(s), str(context.resolve()), str(df), args, env).build(text, tag)


def images_(ctx: typer.Context, as_json: bool = JsonOpt) -> None:
    """List images: NAME:TAG, id (config digest), layers, size (compressed), created."""
    rows: list[dict[str, Any]] = [
        {"ref": i.ref, "id": i.config_digest, "manifest": i.manifest_digest, "layers": len(i.layers),
         "size_bytes": sum(x.size for x in i.layers), "created": i.created} for i in _images(settings(ctx)).images()]
    if as_json:
        print_json(rows)
        return
    from ..units import format_bytes
    fmt = "{:<40} {:<19} {:>6} {:>10}  {}"
    typer.echo(fmt.format("IMAGE", "ID", "LAYERS", "SIZE", "CREATED"))
    for r in rows:
        typer.echo(fmt.format(r["ref"], r["id"][7:19], r["layers"], format_bytes(r["size_bytes"]), r["created"]))


def rmi(ctx: typer.Context, refs: list[str] = typer.Argument(..., help="NAME:TAG of image(s) to untag.")) -> None:
    """Remove image tags (refused while a container runs on one); `cgman image prune` frees the space."""
    from ..images.manage import rmi as do_rmi
    s = settings(ctx)
    live = live_layers(s)
    for r in refs:
        img = do_rmi(_images(s), r, live)
        typer.echo(f"untagged {img.ref}")


@image_app.command("prune")
def prune(ctx: typer.Context, as_json: bool = JsonOpt) -> None:
    """Remove blobs no tag reaches and unpacked layers no tag or container uses."""
    from ..images.manage import prune as do_prune
    s = settings(ctx)
    p = do_prune(_images(s), live_layers(s))
    if as_json:
        print_json({"blobs": p.blobs, "layers": p.layers, "bytes": p.bytes})
    else:
        typer.echo(f"removed {p.blobs} blob(s) ({p.bytes} bytes) and {p.layers} unpacked layer(s)")


@image_app.command("import")
def import_(ctx: typer.Context,
            source: str = typer.Argument(..., help="DIR:TAG of an OCI layout (e.g. from skopeo or umoci)."),
            ref: Optional[str] = typer.Argument(None, help="NAME:TAG here (default: DIR's name and TAG).")) -> None:
    """Import an image from an OCI image layout, every blob and layer checked against its digest."""
    from ..images.manage import import_layout, split_layout_ref
    d, tag = split_layout_ref(source)
    ref = ref or f"{os.path.basename(os.path.abspath(d)).lower()}:{tag}"
    img = import_layout(_images(settings(ctx)), d, tag, ref)
    typer.echo(f"imported {ref} ({img.manifest_digest[:19]}, {len(img.layers)} layers)")


@image_app.command("export")
def export(ctx: typer.Context, ref: str = typer.Argument(..., help="NAME:TAG in the store."),
           dest: Path = typer.Argument(..., help="Directory: an OCI layout (new, or added to), tagged TAG.")) -> None:
    """Write an image as an OCI image layout (`skopeo inspect oci:DIR:TAG`, `umoci unpack` read it)."""
    from ..images.manage import export_layout
    from ..images.store import parse_ref
    img = export_layout(_images(settings(ctx)), ref, str(dest))
    typer.echo(f"exported {img.ref} to {dest}:{parse_ref(ref)[1]}", file=sys.stdout)
