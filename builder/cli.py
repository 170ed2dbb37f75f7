"""`picluster`: the command line. Parses arguments, calls the pipeline, turns UserError into exit 2."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from builder import __version__, backup, base, cluster_api, flash, kubeconfig, run, state, status, tokens
from builder.build import build_images
from builder.config_file import load_cluster
from builder.epoch import source_date_epoch
from builder.errors import UserError
from builder.files import check_output, inside, write_atomic
from builder.model import Cluster, json_schema, warnings
from builder.pki import ClusterSecrets
from builder.progress import Reporter
from builder.render import render_cluster
from builder.tree import check_replaceable, write_tree
from builder.verify import verify

EXIT_USER_ERROR = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        command: Callable[[argparse.Namespace], int] = args.command
        return command(args)
    except UserError as error:
        if args.debug:
            raise
        print(error.render(), file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted; finished outputs are intact, unfinished ones were discarded", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`picluster status | head`): stop quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="picluster",
        description="Build one ready-to-flash SD card image per Raspberry Pi from cluster.yaml.",
        parents=[_common_options(Path("cluster.yaml"), False)],
    )
    # Repeated on each command so they work after it too; SUPPRESS keeps a command's absent
    # option from overwriting one given before the command.
    common = _common_options(argparse.SUPPRESS, argparse.SUPPRESS)
    parser.add_argument("--version", action="version", version=f"picluster {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    validate = commands.add_parser(
        "validate",
        parents=[common],
        help="check cluster.yaml and report every problem",
        description="Check cluster.yaml; print every problem with its line and how to fix it.",
    )
    validate.set_defaults(command=_validate)

    schema = commands.add_parser(
        "schema",
        help="print cluster.yaml's JSON Schema, for editors",
        description="Print the JSON Schema of cluster.yaml, made from picluster's model, for an "
        "editor to complete and describe keys. The checkout keeps a copy in "
        "builder/cluster.schema.json, which the bundled cluster.yaml names on its first line.",
    )
    schema.set_defaults(command=_schema)

    render = commands.add_parser(
        "render",
        parents=[common],
        help="write each node's files to a folder to read",
        description="Write every file that differs between nodes, as it will land on each "
        "card: OUT/<node>/boot/ (the FAT boot partition) and OUT/<node>/root/ (the root "
        "filesystem). Creates the cluster's secrets in .picluster/ on first use.",
    )
    render.add_argument(
        "-o", "--out", type=Path, default=Path("out"), metavar="OUT", help="output folder (default: ./out)"
    )
    render.set_defaults(command=_render)

    build = commands.add_parser(
        "build",
        parents=[common],
        help="build an SD card image per node (only those that changed)",
        description="Build OUT/<node>.img with .sha256 and .bmap beside it for every node in "
        "cluster.yaml. The Debian base image is built once and cached; a node whose card would "
        "not change is left as it is. Building the base needs root.",
    )
    build.add_argument(
        "-o",
        "--out",
        type=Path,
        default=Path("images"),
        metavar="OUT",
        help="images folder (default: ./images)",
    )
    build.add_argument("--compress", choices=["zst", "xz"], help="compress each image")
    build.add_argument(
        "--rebuild-base", action="store_true", help="build the base image again even if it is cached"
    )
    build.add_argument(
        "--cache",
        type=Path,
        default=default_cache(),
        metavar="DIR",
        help="where base images are cached (default: %(default)s)",
    )
    build.add_argument("-v", "--verbose", action="store_true", help="show the commands run")
    build.set_defaults(command=_build)

    check = commands.add_parser(
        "verify",
        parents=[common],
        help="check the booted nodes over SSH (testinfra)",
        description="Run the testinfra suite in tests/verify against every node in cluster.yaml, "
        "over SSH as access.user at the node's address, and print a check-by-node table. Nodes "
        "that do not answer ssh within seconds are named, with ssh's reason, and left out. Exits "
        "non-zero when a check fails or a node does not answer.",
    )
    check.add_argument(
        "--node", action="append", default=[], metavar="NAME", help="only this node (repeatable)"
    )
    check.add_argument(
        "--ssh-config",
        type=Path,
        metavar="FILE",
        help="an ssh_config for reaching the nodes (ports, keys, jumps)",
    )
    check.add_argument(
        "--skip",
        action="append",
        default=[],
        metavar="CHECK",
        help="skip a check, e.g. time_synchronised on a network without NTP (repeatable)",
    )
    check.add_argument("-v", "--verbose", action="store_true", help="show pytest's own output")
    check.set_defaults(command=_verify)

    card = commands.add_parser(
        "flash",
        parents=[common],
        help="write a node's image to an SD card",
        description="Write IMAGES/NODE.img (or .img.zst, .img.xz) to an SD card: only a whole, "
        "removable, unused device at least as large as the image; the image is checked against "
        "its .sha256 first, only its mapped blocks are written, and every block is read back "
        "from the card and checked. Without --device, lists the removable devices.",
    )
    card.add_argument("node", metavar="NODE", help="the node whose image to write")
    card.add_argument("--device", type=Path, metavar="DEV", help="the card's whole device, e.g. /dev/sdb")
    card.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    card.add_argument(
        "--force-non-removable", action="store_true", help="allow a device that does not say it is removable"
    )
    _images_option(card)
    card.set_defaults(command=_flash)

    token = commands.add_parser(
        "token",
        parents=[common],
        help="make a new bootstrap token on the running cluster",
        description="Create a fresh bootstrap token as a Secret through the API server (authenticated "
        "with an admin certificate signed by the cluster CA, TLS pinned to it). Nodes built from "
        "now on carry it; `build` does this itself when a new node needs it.",
    )
    token.set_defaults(command=_token)

    admin = commands.add_parser(
        "kubeconfig",
        parents=[common],
        help="write an admin kubeconfig for the cluster",
        description="Write a kubeconfig with a client certificate (group system:masters, one year) "
        "signed by the cluster CA; mode 0600.",
    )
    admin.add_argument(
        "-o", "--out", type=Path, metavar="FILE", help="where (default: .picluster/admin.conf)"
    )
    admin.set_defaults(command=_kubeconfig)

    keep = commands.add_parser(
        "backup",
        parents=[common],
        help="copy the cluster's secrets (.picluster/) into a checked archive",
        description="Write the state folder next to cluster.yaml (the cluster's CAs and tokens: lose "
        "it and no new node can join) to a gzip'd tar with a manifest of SHA-256s, mode 0600. Only "
        "a folder that loads cleanly is backed up. Keep the archive off this machine, privately.",
    )
    keep.add_argument("-o", "--out", type=Path, required=True, metavar="FILE", help="the archive to write")
    keep.set_defaults(command=_backup)

    back = commands.add_parser(
        "restore",
        parents=[common],
        help="put a backup of the cluster's secrets back in place",
        description="Check a `picluster backup` archive (every file's SHA-256, every key against its "
        "certificate) and put it in place as the state folder next to cluster.yaml. Refuses to "
        "replace a folder that holds secrets.",
    )
    back.add_argument("archive", type=Path, metavar="FILE", help="the archive picluster backup wrote")
    back.set_defaults(command=_restore)

    show = commands.add_parser(
        "status",
        parents=[common],
        help="images built or stale, and what the cluster says of each node",
        description="Per node in cluster.yaml: image built, stale (and why) or missing; when the API "
        "server answers, its Ready condition, kubelet version and address, and nodes the cluster has "
        "that cluster.yaml does not.",
    )
    _images_option(show)
    show.add_argument("--json", action="store_true", help="for scripts")
    show.set_defaults(command=_status)
    return parser


def _images_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "-i",
        "--images",
        type=Path,
        default=Path("images"),
        metavar="DIR",
        help="images folder (default: ./images)",
    )


def _common_options(file_default: object, flag_default: object) -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "-f",
        "--file",
        type=Path,
        default=file_default,
        metavar="PATH",
        help="the cluster description (default: ./cluster.yaml)",
    )
    options.add_argument(
        "--debug", action="store_true", default=flag_default, help="show tracebacks for errors"
    )
    return options


def _load(args: argparse.Namespace) -> Cluster:
    cluster = load_cluster(args.file)
    for warning in warnings(cluster):
        print(f"warning: {warning.path}: {warning.message}\n  hint: {warning.hint}", file=sys.stderr)
    return cluster


def _validate(args: argparse.Namespace) -> int:
    cluster = _load(args)
    planes = len(cluster.control_planes)
    workers = len(cluster.nodes) - planes
    print(
        f"{args.file}: ok: cluster {cluster.cluster.name}, Kubernetes {cluster.cluster.kubernetes}, "
        f"{len(cluster.nodes)} nodes ({planes} control plane{'s' if planes != 1 else ''}, "
        f"{workers} worker{'s' if workers != 1 else ''})"
    )
    return 0


def _schema(args: argparse.Namespace) -> int:
    sys.stdout.write(json_schema())
    return 0


def _render(args: argparse.Namespace) -> int:
    cluster = _load(args)
    mtime = source_date_epoch()
    state_dir = state.state_dir_for(args.file)
    if inside(args.out, state_dir):
        raise UserError(f"-o {args.out} is inside the cluster's state folder {state_dir}", _OUTPUT_HINT)
    _check_output_folder(args.out)
    for node in cluster.nodes:  # every refusal before the first folder is written
        check_replaceable(args.out / node.name)
    secrets = _secrets(args.file)
    for plan in render_cluster(cluster, secrets, _node_tokens(args.file, cluster, secrets)):
        folder = write_tree(plan, args.out, mtime)
        print(f"{plan.node}: {len(plan.files)} files in {folder}")
    return 0


def _check_output_folder(out: Path) -> None:
    """Refuse an -o that cannot hold the nodes' folders before any secret is created for it."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        # write_tree stages each node in a temporary folder inside out; try that once here
        Path(tempfile.mkdtemp(dir=out)).rmdir()
    except FileExistsError:
        raise UserError(f"-o {out} is a file, not a folder", _OUTPUT_HINT) from None
    except OSError as error:
        raise UserError(
            f"-o {out}: cannot write the nodes' folders there: {error.strerror}", _OUTPUT_HINT
        ) from None


_OUTPUT_HINT = "point -o at a folder you can write, or at a path where one can be created"


def _build(args: argparse.Namespace) -> int:
    run.VERBOSE = args.verbose
    cluster = _load(args)
    reporter = Reporter()
    start = time.monotonic()
    secrets = _secrets(args.file)
    tokens = _node_tokens(args.file, cluster, secrets)
    built = build_images(
        cluster, secrets, args.out, args.cache, reporter, args.compress, args.rebuild_base, tokens
    )
    reporter.say(
        f"==> {len(built)} of {len(cluster.nodes)} images built in {time.monotonic() - start:.1f}s"
        + ("" if built else " (nothing changed)")
    )
    return 0


def _verify(args: argparse.Namespace) -> int:
    cluster = _load(args)
    unknown = sorted(set(args.node) - {node.name for node in cluster.nodes})
    if unknown:
        names = ", ".join(node.name for node in cluster.nodes)
        raise UserError(f"--node {', '.join(unknown)}: no such node in {args.file}", f"choose from {names}")
    run.VERBOSE = args.verbose
    # today's stderr, not the one Reporter's default bound at import, so tests can capture it
    reporter = Reporter(sys.stderr)
    return verify(args.file, cluster, args.node, args.ssh_config, args.skip, args.verbose, reporter)


def _flash(args: argparse.Namespace) -> int:
    image = flash.find_image(args.images, args.node)
    _warn_if_stale(args, image)
    if args.device is None:
        disks = flash.removable_disks()
        listing = "\n".join(f"  {disk.describe()}" for disk in disks) or "  (no removable device found)"
        print(f"removable devices:\n{listing}")
        raise UserError(
            "no --device given", f"choose the card: picluster flash {args.node} --device /dev/..."
        )

    def confirm(disk: flash.Disk) -> bool:
        if args.yes:
            return True
        if not sys.stdin.isatty():
            raise UserError("cannot ask for confirmation without a terminal", "add --yes")
        print(f"about to erase {disk.describe()}\nand write {image.name} to it.")
        return input(f"type {disk.name} to go on: ").strip() == disk.name

    flash.flash(image, args.device, force_non_removable=args.force_non_removable, confirm=confirm, say=print)
    return 0


def _node_tokens(cluster_file: Path, cluster: Cluster, secrets: ClusterSecrets) -> dict[str, str]:
    """The bootstrap token each node's card carries; a new node may need a new one (tokens.py)."""
    state_dir = state.state_dir_for(cluster_file)
    loaded = tokens.load_tokens(state_dir, secrets)
    assigned = tokens.assign_tokens(cluster, secrets, loaded, datetime.now(UTC), say=print)
    if assigned != loaded:
        tokens.save_tokens(state_dir, assigned)
    return assigned.nodes


def _token(args: argparse.Namespace) -> int:
    cluster = _load(args)
    secrets = _existing_secrets(args.file, "token")
    state_dir = state.state_dir_for(args.file)
    issued = tokens.issue_token(cluster, secrets, tokens.load_tokens(state_dir, secrets), datetime.now(UTC))
    tokens.save_tokens(state_dir, issued)
    print(
        f"made bootstrap token {issued.current_id} on the cluster, valid for "
        f"{cluster.cluster.token_ttl_hours} h; nodes added from now on carry it"
    )
    return 0


def _kubeconfig(args: argparse.Namespace) -> int:
    cluster = _load(args)
    state_dir = state.state_dir_for(args.file)
    out = args.out or state_dir / "admin.conf"
    secrets = _existing_secrets(args.file, "kubeconfig")
    # the default lives in the state folder; a path the user names may not
    check_output(out, state_dir if args.out else None, lambda data: b"picluster-admin@" in data)
    write_atomic(out, kubeconfig.admin_kubeconfig(cluster, secrets, datetime.now(UTC)).encode(), 0o600)
    print(
        f"wrote {out} (an admin credential for one year: keep it private)\n"
        f"  kubectl --kubeconfig {out} get nodes"
    )
    return 0


def _backup(args: argparse.Namespace) -> int:
    cluster = _load(args)
    state_dir = state.state_dir_for(args.file)
    secrets = _existing_secrets(args.file, "backup")
    check_output(args.out, state_dir, None)  # a backup never replaces another
    count = backup.backup(state_dir, secrets, cluster.cluster.name, args.out)
    print(
        f"backed up {count} files of cluster {cluster.cluster.name} (CA {secrets.ca_cert_hash}) to "
        f"{args.out}\n  it holds the cluster's CA keys: keep it off this machine, where only you can read it"
    )
    return 0


def _restore(args: argparse.Namespace) -> int:
    _load(args)
    state_dir = state.state_dir_for(args.file)
    secrets, name = backup.restore(args.archive, state_dir)
    print(f"restored cluster {name}'s secrets (CA {secrets.ca_cert_hash}) into {state_dir}")
    return 0


def _warn_if_stale(args: argparse.Namespace, image: Path) -> None:
    """An image built before cluster.yaml or the tokens changed still flashes, with a warning;
    when there is no telling (no cluster.yaml, a damaged one), it flashes with a note."""
    try:
        stale = _staleness(args)
    except UserError as error:
        print(f"note: whether {image.name} is current is not known: {error.message}", file=sys.stderr)
        return
    if stale:
        print(
            f"warning: {image.name} is stale against {args.file}: {'; '.join(stale)}\n"
            f"  hint: rebuild it first: picluster build -f {args.file} -o {args.images}",
            file=sys.stderr,
        )


def _staleness(args: argparse.Namespace) -> list[str]:
    """Why the node's image is not what cluster.yaml and the secrets would build now."""
    state_dir = state.state_dir_for(args.file)
    if not args.file.exists() or state.is_new(state_dir):
        raise UserError(f"no cluster.yaml and secrets at {args.file} (-f names the cluster.yaml)")
    cluster = load_cluster(args.file)
    if args.node not in {node.name for node in cluster.nodes}:
        raise UserError(f"{args.node} is not a node of {args.file}")
    (node,) = [s for s in _image_statuses(cluster, state.load(state_dir), state_dir, args.images)
               if s.name == args.node]  # fmt: skip
    return node.why if node.image == "stale" else []


def _image_statuses(
    cluster: Cluster, secrets: ClusterSecrets, state_dir: Path, images: Path
) -> list[status.NodeStatus]:
    plans = render_cluster(cluster, secrets, tokens.load_tokens(state_dir, secrets).nodes)
    return status.image_status(plans, images, base.cache_key(base.manifest(cluster)))


def _status(args: argparse.Namespace) -> int:
    cluster = _load(args)
    secrets = _existing_secrets(args.file, "status")
    statuses = _image_statuses(cluster, secrets, state.state_dir_for(args.file), args.images)
    try:
        with cluster_api.connect(cluster.api_endpoint, secrets) as api:
            statuses = status.add_cluster_view(statuses, cluster_api.list_nodes(api))
        note = f"cluster: https://{cluster.api_endpoint} answered"
    except cluster_api.Unreachable as why:
        note = f"cluster: not reachable ({why})"
    print(status.as_json(statuses, note) if args.json else status.format_status(statuses, note))
    return 0


def default_cache() -> Path:
    configured = os.environ.get("PICLUSTER_CACHE")
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "picluster"


def _existing_secrets(cluster_file: Path, command: str) -> ClusterSecrets:
    """The cluster's secrets for a command that works on a cluster: never made anew here (a user
    who forgot to restore would get a new cluster identity)."""
    state_dir = state.state_dir_for(cluster_file)
    if state.is_new(state_dir):
        raise UserError(
            f"there are no cluster secrets in {state_dir}: `picluster {command}` works on a cluster "
            "picluster has made",
            "bring them back with picluster restore FILE, or make them with picluster render or build",
        )
    return state.load(state_dir)


def _secrets(cluster_file: Path) -> ClusterSecrets:
    state_dir = state.state_dir_for(cluster_file)
    new = state.is_new(state_dir)
    secrets = state.load_or_create(state_dir)
    if new:
        print(
            f"created the cluster's CA and bootstrap token in {state_dir} "
            "(keep it, and a backup of it: nodes built later need it to join; see picluster backup)",
            file=sys.stderr,
        )
    return secrets
