"""`picluster`: the command line. Parses arguments, calls the pipeline, turns UserError into exit 2."""

from __future__ import annotations

import argparse
import os
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from builder import __version__
from builder.card import flash
from builder.cluster import api, bootstrap, kubeconfig, replace, ssh, status, upgrade
from builder.cluster import snapshot as cluster_snapshot
from builder.cluster.verify import Checks, verify
from builder.epoch import source_date_epoch
from builder.errors import UserError
from builder.files import check_output, inside, write_atomic
from builder.image import base
from builder.image.build import build_images
from builder.image.context import BuildContext, default_cache
from builder.image.outputs import NodeOutputs, recorded_images
from builder.progress import Reporter
from builder.project import Project
from builder.render.images import flannel_image, node_images
from builder.render.node import render_cluster
from builder.render.tree import check_replaceable, write_trees
from builder.run import Runner
from builder.secrets import backup, release, snapshot, store, tokens
from builder.secrets.pki import ClusterSecrets
from builder.spec.model import json_schema

EXIT_USER_ERROR = 2
STATUS_BUDGET_S = 30.0
"""`status` waits for the API server this long in all, however many questions it asks."""
Handler = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        command: Handler = args.command
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

    def command(name: str, handler: Handler, help: str, description: str) -> argparse.ArgumentParser:
        added = commands.add_parser(name, parents=[common], help=help, description=description)
        added.set_defaults(command=handler)
        return added

    command(
        "validate",
        _validate,
        help="check cluster.yaml and report every problem",
        description="Check cluster.yaml; print every problem with its line and how to fix it.",
    )

    images = command(
        "images",
        _images,
        help="list the container images a node runs",
        description="Print, one reference a line, every container image NODE runs, which its card "
        "carries or its agent pulls before kubeadm runs: kubeadm's own list for the cluster's exact "
        "Kubernetes release (`kubeadm config images list`), for the node's role (a worker runs kube-proxy, "
        "CoreDNS and pause, no control-plane image), then flannel's. Each image NODE's built card carries "
        "is pinned by its digest (image@sha256:...), as the card's build record in the images folder says.",
    )
    images.add_argument("node", metavar="NODE", help="a node of cluster.yaml")
    _images_option(images)

    command(
        "schema",
        _schema,
        help="print cluster.yaml's JSON Schema, for editors",
        description="Print the JSON Schema of cluster.yaml, made from picluster's model, for an "
        "editor to complete and describe keys. The checkout keeps a copy in "
        "builder/spec/cluster.schema.json, which the bundled cluster.yaml names on its first line.",
    )

    render = command(
        "render",
        _render,
        help="write each node's files to a folder to read",
        description="Write every file that differs between nodes, as it will land on each "
        "card: OUT/<node>/boot/ (the FAT boot partition) and OUT/<node>/root/ (the root "
        "filesystem). Creates the cluster's secrets in .picluster/ on first use; never asks the "
        "running cluster anything or records a token: a node added since the last build is shown "
        "with a stand-in bootstrap token, which `build` replaces by its own.",
    )
    render.add_argument(
        "-o", "--out", type=Path, default=Path("out"), metavar="OUT", help="output folder (default: ./out)"
    )

    build = command(
        "build",
        _build,
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
    _verbose_option(build)

    check = command(
        "verify",
        _verify,
        help="check the booted nodes over SSH (testinfra)",
        description="Run picluster's testinfra suite against every node in cluster.yaml, "
        "over SSH as access.user at the node's address, and print a check-by-node table. Nodes "
        "that do not answer ssh within seconds are named, with ssh's reason, and left out. Exits "
        "non-zero when a check fails or a node does not answer.",
    )
    check.add_argument(
        "--node", action="append", default=[], metavar="NAME", help="only this node (repeatable)"
    )
    _ssh_config_option(check)
    check.add_argument(
        "--skip",
        action="append",
        default=[],
        metavar="CHECK",
        help="skip a check, e.g. time_synchronised on a network without NTP (repeatable)",
    )
    _verbose_option(check, "show the commands run and pytest's own output")

    card = command(
        "flash",
        _flash,
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
    _verbose_option(card)

    token = command(
        "token",
        _token,
        help="make a node a new bootstrap token on the running cluster",
        description="Create a fresh bootstrap token for NODE, valid for the join window, as a Secret "
        "through the API server (authenticated with an admin certificate signed by the cluster CA, "
        "TLS pinned to it), and delete the one it replaces; then rebuild and reflash NODE's card. "
        "`build` does this itself for every node not joined whose token expires within a day.",
    )
    token.add_argument("node", metavar="NODE", help="the node whose card gets the new token")

    swap = command(
        "replace",
        _replace,
        help="make way for a new card under a dead node's name",
        description="Delete the Node object NODE through the API server (refused while it is Ready, "
        "unless --dead) and, for a control plane of an HA cluster, first remove its etcd member through "
        "a surviving control plane's etcd (refused while that member answers, or when the members left "
        "could not make a quorum); then make NODE a new bootstrap token, deleting the dead card's, which "
        "`build` puts on the new card. The first control plane's new card joins the running cluster "
        "instead of running kubeadm init. A cluster's only control plane cannot be replaced this way.",
    )
    swap.add_argument("node", metavar="NODE", help="the node whose card is to be replaced")
    swap.add_argument(
        "--dead", action="store_true", help="the old card is dead even though its Node still shows Ready"
    )

    move = command(
        "upgrade",
        _upgrade,
        help="move the running cluster to cluster.kubernetes, node by node",
        description="Upgrade the running cluster to the release cluster.yaml names (edit "
        "cluster.kubernetes first): print the plan, then, in kubeadm's order, the first control plane "
        "(kubeadm upgrade apply), the other control planes, then the workers (kubeadm upgrade node), "
        "each drained before its kubelet moves and uncordoned once Ready. The nodes are reached over "
        "SSH as picluster verify reaches them. Refused before anything is contacted: a skipped minor, "
        "a downgrade, etcd 3.6 before the newest 3.5. Cut off anywhere, a rerun goes on where it "
        "stopped; once every node runs the release, build writes cards for it.",
    )
    move.add_argument("--plan", action="store_true", help="print the plan and stop")
    _ssh_config_option(move)
    _verbose_option(move)

    admin = command(
        "kubeconfig",
        _kubeconfig,
        help="write an admin kubeconfig for the cluster",
        description="Write a kubeconfig with a client certificate (group system:masters, one year, "
        "or until the CA ends if sooner) signed by the cluster CA; mode 0600. An existing file is "
        "replaced only when it is a kubeconfig exactly as picluster wrote it; --merge puts this "
        "cluster's entries into another kubeconfig (~/.kube/config) and keeps every other entry.",
    )
    admin.add_argument(
        "-o", "--out", type=Path, metavar="FILE", help="where (default: .picluster/admin.conf)"
    )
    admin.add_argument(
        "--merge",
        action="store_true",
        help="replace only this cluster's cluster, user and context entries in FILE, keeping the rest; "
        "FILE is made private (0600), as it holds an admin key",
    )

    keep = command(
        "backup",
        _backup,
        help="copy the cluster's secrets (.picluster/) and its etcd into a checked archive",
        description="Fetch a fresh etcd snapshot from a control plane over SSH into the state folder "
        "next to cluster.yaml, then write that folder (the cluster's CAs and tokens: lose it and no "
        "new node can join; the snapshot: every object and Secret of the cluster, in clear) to a "
        "gzip'd tar with a manifest of SHA-256s, mode 0600. Only a folder that loads cleanly is backed "
        "up. Keep the archive off this machine, privately.",
    )
    keep.add_argument("-o", "--out", type=Path, required=True, metavar="FILE", help="the archive to write")
    keep.add_argument(
        "--secrets-only",
        action="store_true",
        help="ask no control plane for a snapshot (none has booted yet); the folder's last one is kept",
    )
    _ssh_config_option(keep)
    _verbose_option(keep)

    back = command(
        "restore",
        _restore,
        help="put a backup of the cluster's secrets back in place",
        description="Check a `picluster backup` archive (every file's SHA-256, every key against its "
        "certificate) and put it in place as the state folder next to cluster.yaml. Refuses to "
        "replace a folder that holds secrets, and a backup of a cluster of another name.",
    )
    back.add_argument("archive", type=Path, metavar="FILE", help="the archive picluster backup wrote")
    back.add_argument(
        "--other-cluster",
        action="store_true",
        help="restore a backup whose cluster name is not the one in cluster.yaml",
    )

    show = command(
        "status",
        _status,
        help="images built or stale, and what the cluster says of each node",
        description="Per node in cluster.yaml: image built, stale (and why) or missing; when the API "
        "server answers, its Ready condition, kubelet version and address, and nodes the cluster has "
        "that cluster.yaml does not.",
    )
    _images_option(show)
    show.add_argument("--json", action="store_true", help="for scripts")
    return parser


def _verbose_option(command: argparse.ArgumentParser, help: str = "show the commands run") -> None:
    command.add_argument("-v", "--verbose", action="store_true", help=help)


def _ssh_config_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--ssh-config",
        type=Path,
        metavar="FILE",
        help="an ssh_config for reaching the nodes (ports, keys, jumps)",
    )


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


def _project(args: argparse.Namespace) -> Project:
    project = Project.open(args.file)
    for deprecated in project.cluster.deprecations():
        _note(f"note: {deprecated}")
    return project


def _note(text: str) -> None:
    print(text, file=sys.stderr)


def _validate(args: argparse.Namespace) -> int:
    project = _project(args)
    note = project.check_settings()
    cluster = project.cluster
    planes = len(cluster.control_planes)
    workers = len(cluster.nodes) - planes
    print(
        f"{args.file}: ok: cluster {cluster.cluster.name}, Kubernetes {cluster.cluster.kubernetes}, "
        f"{len(cluster.nodes)} nodes ({planes} control plane{'s' if planes != 1 else ''}, "
        f"{workers} worker{'s' if workers != 1 else ''})"
    )
    if note:
        _note(f"note: {note}")
    return 0


def _images(args: argparse.Namespace) -> int:
    cluster = _project(args).cluster
    node = next((node for node in cluster.nodes if node.name == args.node), None)
    if node is None:
        names = ", ".join(node.name for node in cluster.nodes)
        raise UserError(f"{args.node} is not a node of {args.file}", f"choose from {names}")
    listed = node_images(cluster, node)
    if listed.unknown:
        _note(f"note: {listed.unknown}")
    carried = recorded_images(NodeOutputs(args.images, node.name, None))
    print("\n".join(f"{ref}@{carried[ref]}" if ref in carried else ref for ref in listed.references))
    return 0


def _schema(args: argparse.Namespace) -> int:
    sys.stdout.write(json_schema())
    return 0


def _render(args: argparse.Namespace) -> int:
    project = _project(args)
    mtime = source_date_epoch()
    if inside(args.out, project.state_dir):
        raise UserError(
            f"-o {args.out} is inside the cluster's state folder {project.state_dir}", _OUTPUT_HINT
        )
    _check_output_folder(args.out)
    for node in project.cluster.nodes:  # every refusal before the first folder is written
        check_replaceable(args.out / node.name)
    secrets = project.secrets(_note)
    plans = render_cluster(
        project.cluster, secrets, project.recorded_tokens(secrets), etcd_snapshot=project.restore_snapshot()
    )
    for plan, folder in zip(plans, write_trees(plans, args.out, mtime), strict=True):
        print(f"{plan.node}: {len(plan.files)} files in {folder}")
    note = project.tokens_note(secrets)
    if note:
        _note(f"note: {note}")
    return 0


def _check_output_folder(out: Path) -> None:
    """Refuse an -o that cannot hold the nodes' folders before any secret is created for it."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        # write_trees stages each node in a temporary folder inside out; try that once here
        Path(tempfile.mkdtemp(dir=out)).rmdir()
    except FileExistsError:
        raise UserError(f"-o {out} is a file, not a folder", _OUTPUT_HINT) from None
    except OSError as error:
        raise UserError(
            f"-o {out}: cannot write the nodes' folders there: {error.strerror}", _OUTPUT_HINT
        ) from None


_OUTPUT_HINT = "point -o at a folder you can write, or at a path where one can be created"


def _build(args: argparse.Namespace) -> int:
    project = _project(args)
    reporter = Reporter()
    context = BuildContext(
        args.out, args.cache, reporter, Runner(args.verbose), args.compress, args.rebuild_base
    )
    start = time.monotonic()
    secrets = project.secrets(_note)
    project.release_for_cards(_note)
    built = build_images(
        project.cluster, secrets, project.tokens_to_build(secrets, print), context, project.restore_snapshot()
    )
    nodes = len(project.cluster.nodes)
    reporter.say(
        f"==> {len(built)} of {nodes} images built in {time.monotonic() - start:.1f}s"
        + ("" if built else " (nothing changed)")
    )
    return 0


def _verify(args: argparse.Namespace) -> int:
    project = _project(args)
    unknown = sorted(set(args.node) - {node.name for node in project.cluster.nodes})
    if unknown:
        names = ", ".join(node.name for node in project.cluster.nodes)
        raise UserError(f"--node {', '.join(unknown)}: no such node in {args.file}", f"choose from {names}")
    checks = Checks(args.node, args.skip, args.ssh_config)
    # today's stderr, not the one Reporter's default bound at import, so tests can capture it
    return verify(args.file, project.cluster, checks, Reporter(sys.stderr), Runner(args.verbose))


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

    flash.flash(image, args.device, force_non_removable=args.force_non_removable, confirm=confirm, say=print,
                runner=Runner(args.verbose))  # fmt: skip
    return 0


def _token(args: argparse.Namespace) -> int:
    project = _project(args)
    project.new_token(project.existing_secrets("token"), args.node)
    print(
        f"made {args.node} a new bootstrap token on the cluster, valid for "
        f"{project.cluster.join_window.days} days; its card needs it: picluster build, then "
        f"picluster flash {args.node}"
    )
    return 0


def _replace(args: argparse.Namespace) -> int:
    project = _project(args)
    secrets = project.existing_secrets("replace")
    node, others = replace.check_replaceable(project.cluster, args.node)  # refusals before any change
    if node.role == "control-plane" and not others:
        taken = replace.restore_only_control_plane(project.cluster, secrets, node.name, project.state_dir)
        print(
            f"{node.name} is the only control plane: its next card restores etcd from the snapshot "
            f"{taken.describe()}; what changed since is lost\n"
            f"next: picluster build -f {args.file}, then picluster flash {node.name} --device ..., and boot "
            "the new card: it restores etcd and starts the control plane; the workers reconnect by themselves"
        )
        return 0
    project.tokens_for_new(secrets, args.node, replacing=True)
    first = args.node == project.cluster.init_node.name
    answered = (lambda: project.first_joins(secrets)) if first else (lambda: None)
    replace.replace_node(project.cluster, secrets, args.node, args.dead, say=print, answered=answered)
    project.new_token(secrets, args.node)  # the dead card's token is deleted
    if first:
        print(f"{args.node}'s cards join the running cluster from now on, as the other control planes' do")
    print(
        f"next: picluster build -f {args.file}, then picluster flash {args.node} --device ..., and boot "
        f"the new card: it joins as {args.node}"
    )
    return 0


def _upgrade(args: argparse.Namespace) -> int:
    project = _project(args)
    secrets = project.existing_secrets("upgrade")  # refuses a move kubeadm refuses, first
    running, wanted = project.running_release(), project.wanted_release
    if running is None:
        raise UserError(
            "no card of this cluster has been built: nothing runs that could be upgraded",
            f"picluster build writes cards for Kubernetes {wanted}",
        )
    progress = upgrade.Progress.load(project.state_dir)
    if progress is not None and progress.wanted != wanted:
        raise UserError(
            f"an upgrade to {progress.wanted} is under way ({upgrade.PROGRESS_FILE} in {project.state_dir})",
            f"set cluster.kubernetes to {progress.wanted} and run picluster upgrade to finish it first",
        )
    if progress is None:
        if running == wanted:
            print(f"the cluster runs Kubernetes {running} already: nothing to upgrade")
            return 0
        progress = upgrade.Progress(running, wanted, {})
    print(upgrade.format_plan(project.cluster, progress.running, wanted, progress.done))
    if args.plan:
        return 0
    try:
        with api.connect(project.cluster.api_endpoint, secrets) as server:
            version = api.server_version(server)
    except api.Unreachable as why:
        raise UserError(
            f"the API server does not answer ({why})", "an upgrade needs the cluster up"
        ) from None
    if version.removeprefix("v") not in (str(progress.running), str(wanted)):
        raise UserError(
            f"the API server runs {version}, but picluster recorded {progress.running} as the cluster's "
            "release: the cluster was changed by other means",
            f"write the release it runs into {project.state_dir / release.RELEASE_FILE}, then plan again",
        )
    progress.save(project.state_dir)
    shell = ssh.ssh_shell(project.cluster.access.user, args.ssh_config, Runner(args.verbose))
    upgrade.upgrade(project.cluster, secrets, project.state_dir, progress, shell, Reporter())
    return 0


def _kubeconfig(args: argparse.Namespace) -> int:
    project = _project(args)
    out = args.out or project.state_dir / store.ADMIN_CONF
    secrets = project.existing_secrets("kubeconfig")
    # the default lives in the state folder; a path the user names may not. Any file may be
    # merged into; which may be replaced is settled below
    check_output(out, project.state_dir if args.out else None, lambda data: True)
    ours = kubeconfig.admin_kubeconfig(project.cluster, secrets, datetime.now(UTC))
    existing = _read(out) if out.exists() else None
    name = project.cluster.cluster.name
    if existing is not None and args.merge:
        merged = kubeconfig.merged_kubeconfig(existing, ours, str(out))
        before = out.stat()
        mode = stat.S_IMODE(before.st_mode) & 0o700  # it now holds an admin key, as kubectl's 0600
        write_atomic(out, merged.encode(), mode)
        if os.geteuid() == 0:  # `sudo picluster kubeconfig --merge -o ~/.kube/config`: still the user's
            os.chown(out, before.st_uid, before.st_gid)
        tightened = (
            f"; its mode is now {mode:04o}, was {stat.S_IMODE(before.st_mode):04o}"
            if mode != stat.S_IMODE(before.st_mode)
            else ""
        )
        print(
            f"merged cluster {name}'s entries into {out}, every other entry kept (an admin credential "
            f"for one year: keep it private{tightened})\n  kubectl --context picluster-admin@{name} get nodes"
        )
        return 0
    if existing is not None and not kubeconfig.written_by_picluster(existing):
        raise UserError(
            f"{out} exists and is not a kubeconfig picluster wrote (or kubectl has changed it since); "
            "it is left as it is",
            "add --merge to put this cluster's entries into it and keep every other, or name a new file",
        )
    write_atomic(out, ours.encode(), 0o600)
    print(
        f"wrote {out} (an admin credential for one year: keep it private)\n"
        f"  kubectl --kubeconfig {out} get nodes"
    )
    return 0


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror}", "name a file you can read") from None


def _backup(args: argparse.Namespace) -> int:
    project = _project(args)
    secrets = project.existing_secrets("backup", current=False)
    check_output(args.out, project.state_dir, None)  # a backup never replaces another
    name = project.cluster.cluster.name
    backup.check(project.state_dir, secrets)
    fetched: cluster_snapshot.NoSnapshot | None = None
    if not args.secrets_only:
        shell = ssh.ssh_shell(project.cluster.access.user, args.ssh_config, Runner(args.verbose), timeout=900)
        try:
            taken = cluster_snapshot.fetch(project.cluster, shell, project.state_dir, print)
            print(f"fetched etcd's snapshot {taken.describe()}")
        except cluster_snapshot.NoSnapshot as why:
            fetched = why
    kept = snapshot.load(project.state_dir)
    if fetched is not None:
        _note(
            f"warning: no control plane sent an etcd snapshot ({fetched}); the backup holds "
            + (f"the one {kept.describe()}" if kept else "no snapshot: the cluster's objects are not in it")
        )
    held = "the cluster's CA keys" + (" and its etcd snapshot (every Secret, in clear)" if kept else "")
    count = backup.backup(project.state_dir, secrets, name, args.out)
    print(
        f"backed up {count} files of cluster {name} (CA {secrets.ca_cert_hash}) to "
        f"{args.out}\n  it holds {held}: keep it off this machine, where only you can read it"
    )
    return 0


def _restore(args: argparse.Namespace) -> int:
    project = _project(args)
    secrets, name = backup.restore(
        args.archive, project.state_dir, project.cluster.cluster.name, args.other_cluster
    )
    print(f"restored cluster {name}'s secrets (CA {secrets.ca_cert_hash}) into {project.state_dir}")
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
    if not args.file.exists() or store.is_new(store.state_dir_for(args.file)):
        raise UserError(f"no cluster.yaml and secrets at {args.file} (-f names the cluster.yaml)")
    project = Project.open(args.file)
    if args.node not in {node.name for node in project.cluster.nodes}:
        raise UserError(f"{args.node} is not a node of {args.file}")
    (node,) = [s for s in _image_statuses(project, store.load(project.state_dir), args.images)
               if s.name == args.node]  # fmt: skip
    return node.why if node.image == "stale" else []


def _image_statuses(project: Project, secrets: ClusterSecrets, images: Path) -> list[status.NodeStatus]:
    """Each node's card rendered as its build would render it now, with the flannel image its
    record says it carries (telling which one the next build makes would mean starting Go)."""
    tokens = project.recorded_tokens(secrets)
    flannel = {
        node.name: recorded_images(NodeOutputs(images, node.name, None)).get(
            flannel_image(project.cluster, None)
        )
        for node in project.cluster.nodes
    }
    restoring = project.restore_snapshot()
    rendered = {
        digest: render_cluster(project.cluster, secrets, tokens, digest, restoring)
        for digest in set(flannel.values())
    }
    plans = [
        next(plan for plan in rendered[flannel[node.name]] if plan.node == node.name)
        for node in project.cluster.nodes
    ]
    return status.image_status(plans, images, base.cache_key(base.manifest(project.cluster)))


def _status(args: argparse.Namespace) -> int:
    project = _project(args)
    secrets = project.existing_secrets("status", current=False)
    statuses = _image_statuses(project, secrets, args.images)
    endpoint = project.cluster.api_endpoint
    lapsing: list[bootstrap.Waiting] = []
    now = datetime.now(UTC)
    warnings: list[str] = []
    try:
        with api.connect(endpoint, secrets, budget=STATUS_BUDGET_S) as server:
            statuses, unnamed = status.add_cluster_view(statuses, api.list_nodes(server))
            lapsing = bootstrap.lapsing(
                server, project.cluster, tokens.load_tokens(project.state_dir, secrets), now
            )
            version, expires = api.server_version(server), api.serving_certificate_expiry(server)
        note = f"cluster: https://{endpoint} answered: {status.server_note(version, expires, now)}"
        if unnamed:
            note += f"; {unnamed} node object{'s' if unnamed != 1 else ''} without a name were left out"
        warnings = status.server_warnings(
            version, project.running_release(), expires, now, project.cluster.init_node.name
        )
    except api.Unreachable as why:
        note = f"cluster: not reachable ({why})"
    fixes = [f"{item.describe(now)}: picluster build, then picluster flash {item.node}" for item in lapsing]
    show = status.as_json if args.json else status.format_status
    print(show(statuses, note, fixes + warnings))
    return 0
