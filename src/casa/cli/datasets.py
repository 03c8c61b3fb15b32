"""``casa datasets``: the catalog of named datasets."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from rich.table import Table

from casa.cli.access import admin_only
from casa.cli.console import console
from casa.config import facility_paths
from casa.errors import DataError, UsageError
from casa.names import DEFAULT_TREE

if TYPE_CHECKING:  # imported where used: a usage error is reported before they load
    from casa.data.catalog import DatasetCatalog
    from casa.data.exports import ExportedCatalog

#: What --schema records.
SCHEMA_HELP = (
    "the dataset's default coffea schema for 'casa run' (NanoAODSchema, BaseSchema, ..., "
    "module:Class or path/to/file.py:Class)"
)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``datasets`` command group."""
    p = sub.add_parser("datasets", help="add, list, show, remove, import and export datasets")
    ds = p.add_subparsers(dest="datasets_command", metavar="ACTION")
    ds.required = True

    add = ds.add_parser("add", help="register ROOT files (files, globs or folders) as a dataset")
    add.add_argument("name", help="dataset name")
    add.add_argument("paths", nargs="*", metavar="PATH", help="files, glob patterns or folders")
    add.add_argument(
        "--from-delivery", metavar="REQUEST_ID",
        help="instead of PATHs: the ROOT outputs of a finished delivery transform (its "
        "request id, as the ServiceX client shows it), stored in its owner's area unless "
        "--public",
    )  # fmt: skip
    add.add_argument("--tree", default=DEFAULT_TREE, help="tree to read (default: Events)")
    add.add_argument("--schema", metavar="NAME", help=SCHEMA_HELP)
    add.add_argument(
        "--store",
        action="store_true",
        help="copy the files into facility storage and register their root:// URLs (via the cache)",
    )
    area = add.add_mutually_exclusive_group()
    area.add_argument(
        "--public", action="store_true", help="with --store: under /store/data (the default)"
    )
    area.add_argument("--user", metavar="NAME", help="with --store: under /store/user/NAME")
    add.set_defaults(handler=admin_only("datasets add")(handle_add))

    ls = ds.add_parser("list", help="list the datasets")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(handler=handle_list)

    show = ds.add_parser("show", help="show one dataset and its files")
    show.add_argument("name", help="dataset name")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(handler=handle_show)

    rm = ds.add_parser(
        "remove",
        help="forget a dataset and delete the files casa stored for it (other files stay)",
    )
    rm.add_argument("name", help="dataset name")
    rm.set_defaults(handler=admin_only("datasets remove")(handle_remove))

    imp = ds.add_parser("import", help="register the datasets of a coffea fileset JSON file")
    imp.add_argument("file", help="fileset JSON ({name: [files]} or {name: {'files': ...}})")
    imp.add_argument(
        "--schema",
        metavar="NAME",
        help=SCHEMA_HELP + "; for every imported dataset whose entry names no 'schema'",
    )
    imp.set_defaults(handler=admin_only("datasets import")(handle_import))

    exp = ds.add_parser("export", help="write datasets as a coffea fileset JSON")
    exp.add_argument("names", nargs="*", metavar="NAME", help="datasets to export (default: all)")
    exp.add_argument("--out", metavar="FILE", help="write to FILE instead of standard output")
    exp.set_defaults(handler=handle_export)


def open_catalog(args: argparse.Namespace) -> DatasetCatalog | ExportedCatalog:
    """The catalog of the facility chosen by ``--home`` / ``$CASA_HOME``.

    Every change rewrites what notebooks read of it (:mod:`casa.data.exports`). One of the
    facility's users reads the datasets they may read (:mod:`casa.cli.access`).
    """
    from casa.auth.accounts import current_account
    from casa.data.exports import ExportedCatalog, facility_catalog

    paths = facility_paths(args.home).ensure()
    if not paths.run_by_caller():
        return ExportedCatalog(paths, current_account())
    return facility_catalog(paths)


def _report_exports(catalog: DatasetCatalog) -> None:
    """Say which notebooks' catalogs could not follow a change (the change itself stands)."""
    for problem in catalog.warnings:
        console.print(
            f"[yellow]warning:[/] {problem}; it is written again when their server next starts"
        )


def handle_add(args: argparse.Namespace) -> int:
    """Register files as a dataset (copying them into facility storage with --store)."""
    catalog = open_catalog(args)
    if (args.public or args.user) and not (args.store or args.from_delivery):
        raise UsageError("--public and --user choose a storage area: use them with --store")
    args.schema = recorded_schema(args.schema)
    if args.from_delivery:
        _from_delivery(args)
    elif not args.paths:
        raise UsageError(
            "name the files to add (PATH...), or a delivery transform with --from-delivery ID"
        )
    if args.store:
        dataset = _add_stored(args, catalog)
    else:
        dataset = catalog.add(args.name, args.paths, args.tree, schema=args.schema)
    console.print(
        f"added dataset [bold]{dataset.name}[/]: {len(dataset.files)} file(s), "
        f"{dataset.events:,} events, {dataset.bytes / 1e6:.1f} MB"
        + (f", schema {dataset.schema}" if dataset.schema else "")
    )
    _report_exports(catalog)
    return 0


def handle_list(args: argparse.Namespace) -> int:
    """List datasets."""
    datasets = open_catalog(args).list()
    if args.json:
        console.print_json(json.dumps([d.to_dict(with_files=False) for d in datasets]))
        return 0
    if not datasets:
        console.print("no datasets yet: add one with 'casa datasets add NAME PATH...'")
        return 0
    table = Table("name", "files", "events", "size", "schema", "created")
    for d in datasets:
        table.add_row(
            d.name, str(len(d.files)), f"{d.events:,}", _size(d.bytes), d.schema or "-",
            d.created.isoformat(" "),
        )  # fmt: skip
    console.print(table)
    return 0


def handle_show(args: argparse.Namespace) -> int:
    """Show one dataset."""
    d = open_catalog(args).get(args.name)
    if args.json:
        console.print_json(json.dumps(d.to_dict()))
        return 0
    from casa.analysis.schemas import DEFAULT_SCHEMA

    schema = (
        f"schema {d.schema}" if d.schema else f"no schema of its own (runs use {DEFAULT_SCHEMA})"
    )
    console.print(
        f"[bold]{d.name}[/]: {len(d.files)} file(s), {d.events:,} events, {_size(d.bytes)}, "
        f"{schema}, created {d.created.isoformat(' ')}"
    )
    if d.metadata:
        console.print("metadata: " + json.dumps(d.metadata), soft_wrap=True, markup=False)
    table = Table("url", "tree", "events", "size", "steps")
    for f in d.files:
        steps = f"{len(f.steps)}" if f.steps else "-"
        table.add_row(f.url, f.tree, f"{f.events:,}", _size(f.bytes), steps)
    console.print(table)
    return 0


def handle_remove(args: argparse.Namespace) -> int:
    """Remove a dataset from the catalog, and from facility storage if casa stored it there."""
    from casa.facility import facility_context
    from casa.names import dataset_area

    catalog = open_catalog(args)
    dataset = catalog.get(args.name)
    area = dataset_area(dataset.name, [f.url for f in dataset.files])
    if area is None:
        catalog.remove(args.name)
        console.print(f"removed dataset {args.name} (its files were left in place)")
        _report_exports(catalog)
        return 0
    ctx = facility_context(args.home, args.config)
    storage = ctx.storage()
    aside = storage.set_aside(area)
    try:
        catalog.remove(args.name)
    except BaseException:
        storage.put_back(area)
        raise
    _report_exports(catalog)
    if aside is None:
        console.print(
            f"removed dataset {args.name}; its files in {area} are not on this host: delete "
            "them on the origin's host"
        )
        return 0
    count = sum(1 for p in aside.iterdir() if p.is_file())
    shutil.rmtree(aside)
    shutil.rmtree(ctx.paths.cache_disk / area.lstrip("/"), ignore_errors=True)  # cached copies
    console.print(
        f"removed dataset {args.name} and deleted its {count} file(s) from facility storage "
        f"({area})"
    )
    return 0


def _check_storage_user(args: argparse.Namespace, ctx) -> None:
    """UsageError unless ``--user`` names a facility user (a storage area of a real reader)."""
    import pwd

    from casa.auth.accounts import AccountStore, current_account
    from casa.names import check_storage_name

    check_storage_name(args.user, "--user")
    if AccountStore(ctx.paths.database).get(args.user) is not None:
        return
    if not ctx.as_root and args.user == current_account():
        return  # without root the facility's one user is the account running it
    if ctx.config.hub.auth == "oidc":
        try:
            pwd.getpwnam(args.user)
            return  # OpenID Connect users are the Unix accounts the hub logs in
        except KeyError:
            pass
    raise UsageError(
        f"--user {args.user}: there is no facility user of that name ('casa user list' shows "
        f"them); add one with 'casa user add {args.user}'"
    )


def handle_import(args: argparse.Namespace) -> int:
    """Import a coffea fileset."""
    path = Path(args.file)
    try:
        fileset = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"fileset file {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON: {e}") from None
    for entry in fileset.values() if isinstance(fileset, dict) else ():
        if isinstance(entry, dict) and isinstance(entry.get("schema"), str):
            entry["schema"] = recorded_schema(entry["schema"])
    catalog = open_catalog(args)
    added = catalog.import_fileset(fileset, schema=recorded_schema(args.schema))
    for d in added:
        extras = [f"schema {d.schema}"] if d.schema else []
        if d.metadata:
            extras.append(f"metadata {', '.join(d.metadata)}")
        console.print(
            f"imported dataset [bold]{d.name}[/]: {len(d.files)} file(s), {d.events:,} events"
            + "".join(f", {x}" for x in extras)
        )
    _report_exports(catalog)
    return 0


def handle_export(args: argparse.Namespace) -> int:
    """Export datasets as a coffea fileset."""
    fileset = open_catalog(args).export_fileset(args.names)
    text = json.dumps(fileset, indent=2) + "\n"
    if args.out:
        out = Path(args.out)
        if out.is_dir():
            raise UsageError(f"--out {out} is a folder: give a file name")
        out.write_text(text)
        console.print(f"wrote {len(fileset)} dataset(s) to {out}")
    else:
        print(text, end="")
    return 0


def recorded_schema(spec: str | None) -> str | None:
    """``--schema`` as the catalog records it: resolved now (a typo fails here, not in a
    later run), a schema file's path made absolute.

    A dataset's default schema is resolved again when a run uses it, from wherever that run
    starts; a file named relative to this folder would not be found from another.
    """
    from casa.analysis.schemas import resolve_schema
    from casa.data.catalog import check_schema_name

    spec = check_schema_name(spec)
    if spec is None:
        return None
    where, _, name = spec.rpartition(":")
    if where.endswith(".py"):
        path = Path(where).expanduser()
        if not path.is_file():
            raise UsageError(f"--schema {spec}: schema file {path} does not exist")
        spec = f"{path.resolve()}:{name}"
    resolve_schema(spec)
    return spec


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def _from_delivery(args: argparse.Namespace) -> None:
    """Point ``args`` at a finished transform's ROOT outputs, to be stored (in its owner's
    area: they are made of files the owner may read, which others may not)."""
    from casa.facility import facility_context
    from casa.services.delivery.records import COMPLETE, FILE_DONE, DeliveryRecords
    from casa.services.s3.service import object_store

    if args.paths:
        raise UsageError("give either PATHs or --from-delivery, not both")
    ctx = facility_context(args.home, args.config)
    database = ctx.service_dir("delivery") / "delivery.sqlite"
    t = DeliveryRecords(database).get(args.from_delivery) if database.exists() else None
    if t is None:
        raise UsageError(
            f"no delivery transform {args.from_delivery!r}: the request id is the one the "
            "ServiceX client shows (or its download folder's name)"
        )
    if t.status != COMPLETE or t.result_format != "root-file":
        raise UsageError(
            f"transform {t.request_id} is {t.status} with {t.result_format} outputs: a dataset "
            "needs the ROOT outputs (the client's default format) of a complete transform"
        )
    from casa.worker.func_adl_query import OUTPUT_TREE as FUNC_ADL_TREE
    from casa.worker.func_adl_query import is_func_adl

    bucket = object_store(ctx).bucket_dir(t.request_id)
    args.paths = [str(bucket / f.object_name) for f in t.files if f.state == FILE_DONE]
    if not args.paths:
        raise UsageError(f"transform {t.request_id} has no output: every input file failed")
    args.store = True
    if args.tree == DEFAULT_TREE and is_func_adl(t.query):
        args.tree = FUNC_ADL_TREE  # a FuncADL query's one output tree
    if not args.public and args.user is None:
        args.user = t.owner  # the issuer minted their token: a reader of this facility
        args.user_is_owner = True


def _add_stored(args: argparse.Namespace, catalog: DatasetCatalog):
    """Check the files, copy them into storage, register their root:// URLs; undo on failure."""
    from casa.data.files import expand_paths, inspect_root_file
    from casa.facility import facility_context
    from casa.names import check_dataset_name

    check_dataset_name(args.name)
    if args.name in {d.name for d in catalog.list()}:
        raise DataError(
            f"a dataset named {args.name!r} exists already: choose another name, "
            f"or remove it first with 'casa datasets remove {args.name}'"
        )
    ctx = facility_context(args.home, args.config)
    if args.user is not None and not getattr(args, "user_is_owner", False):
        _check_storage_user(args, ctx)
    files = [inspect_root_file(p, args.tree) for p in expand_paths(args.paths)]
    storage = ctx.storage()
    copied = storage.store(args.name, files, user=args.user)
    try:
        return catalog.add_files(
            args.name,
            copied,
            metadata={"area": storage.area(args.name, args.user)},
            schema=args.schema,
        )
    except BaseException:
        storage.remove(args.name, args.user)
        raise
