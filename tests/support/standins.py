"""STAND-INS for kubeadm, kubectl, kubelet, crictl, apt-get and apt-mark: the real programs
cannot run on these machines (no cluster, no Pi, no container runtime). tests/support/agent.py
puts a small launcher for each on PATH that runs this file.

Every call is recorded (one JSON line in calls.jsonl beside the launchers). kubeadm does to the
node's files what the real kubeadm does, read from its source (kubernetes/kubernetes,
cmd/kubeadm/app), because the agent's recovery depends on exactly those files: a stand-in kinder
than kubeadm would hide the bug where a retried `kubeadm init` found an empty
/etc/kubernetes/pki and made the cluster a new CA. Which CA each init or control-plane join
found is recorded in cas.jsonl. Files in the launchers' folder steer failures: `fail-times`
(the next N inits or joins fail after writing their files, as a wait for the control plane or
the kubelet's TLS bootstrap does), `hang` (they hang there instead), `reset-fail-times` (the
next N resets fail before they clean anything, as one does when it cannot unmount what kubelet
mounted under /var/lib/kubelet), `ready-nodes` (the names of the Nodes the cluster has with
status Ready, one a line: a join under one of them is refused, as kubeadm refuses it) and
`etcd-learner` (another control plane's etcd learner is not promoted yet: a control-plane join
cannot add its own). `cluster-tokens`, when present, lists the ids of the bootstrap
tokens the cluster knows (one a line): a join with any other fails discovery, after the seconds
in `discovery-timeout` (kubeadm's 5 minutes when absent). crictl keeps the images its runtime
has in `images` (one reference a line); `pull-fail-times` makes the next N pulls fail as a pull
over a link that is down does.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sys
import time
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

KUBERNETES = Path("etc/kubernetes")
PKI = KUBERNETES / "pki"
MANIFESTS = KUBERNETES / "manifests"
KUBELET_DIR = Path("var/lib/kubelet")
ETCD_DATA = Path("var/lib/etcd")
CONTROL_PLANE_MANIFESTS = ("kube-apiserver.yaml", "kube-controller-manager.yaml", "kube-scheduler.yaml",
                           "etcd.yaml")  # fmt: skip
RESET_FILES = ("admin.conf", "super-admin.conf", "kubelet.conf", "bootstrap-kubelet.conf",
               "controller-manager.conf", "scheduler.conf")  # fmt: skip
"""cmd/kubeadm/app/cmd/phases/reset/cleanupnode.go: the kubeconfig files reset deletes."""
CAS = ("ca", "front-proxy-ca", "etcd/ca")
LEAVES = {
    "admin.conf": (Path("admin.conf"), "ca",
                   "certificate embedded in the kubeconfig file for the admin to use and for kubeadm itself"),
    "apiserver": (Path("pki/apiserver.crt"), "ca", "certificate for serving the Kubernetes API"),
    "apiserver-etcd-client": (Path("pki/apiserver-etcd-client.crt"), "etcd/ca",
                              "certificate the apiserver uses to access etcd"),
    "apiserver-kubelet-client": (Path("pki/apiserver-kubelet-client.crt"), "ca",
                                 "certificate for the API server to connect to kubelet"),
    "controller-manager.conf": (
        Path("controller-manager.conf"), "ca",
        "certificate embedded in the kubeconfig file for the controller manager to use"),
    "etcd-healthcheck-client": (Path("pki/etcd/healthcheck-client.crt"), "etcd/ca",
                                "certificate for liveness probes to healthcheck etcd"),
    "etcd-peer": (Path("pki/etcd/peer.crt"), "etcd/ca",
                  "certificate for etcd nodes to communicate with each other"),
    "etcd-server": (Path("pki/etcd/server.crt"), "etcd/ca", "certificate for serving etcd"),
    "front-proxy-client": (Path("pki/front-proxy-client.crt"), "front-proxy-ca",
                           "certificate for the front proxy client"),
    "scheduler.conf": (Path("scheduler.conf"), "ca",
                       "certificate embedded in the kubeconfig file for the scheduler manager to use"),
    "super-admin.conf": (Path("super-admin.conf"), "ca",
                         "certificate embedded in the kubeconfig file for the super-admin"),
}  # fmt: skip
"""What `kubeadm certs check-expiration` lists and `certs renew all` renews, in its order, with the
file under /etc/kubernetes, the CA that signs it and the words renew prints for it
(cmd/kubeadm/app/phases/certs/renewal/manager.go NewManager; kubelet.conf is left out: the kubelet
rotates its own client certificate)."""
SHARED_CERTIFICATES = {
    "ca.crt": "failure loading certificate for CA",
    "sa.key": "failure loading key for service account",
    "front-proxy-ca.crt": "failure loading certificate for front-proxy CA",
    "etcd/ca.crt": "failure loading certificate for etcd CA",
}
"""cmd/kubeadm/app/phases/certs/certs.go SharedCertificateExists: what a control plane joining
without --certificate-key must find, with the words of each failure (a missing CA key is only
warned about since 1.20)."""
DISCOVERY_TIMEOUT_S = 300
"""cmd/kubeadm/app/constants/constants.go DiscoveryTimeout (v1beta4 timeouts.discovery)."""
PREFLIGHT_TRAILER = (
    "[preflight] If you know what you are doing, you can make a check non-fatal with "
    "`--ignore-preflight-errors=...`\nTo see the stack trace of this error execute with --v=5 or higher"
)


class Failed(Exception):
    pass


def main(tool: str, folder: Path, argv: list[str]) -> int:
    with open(folder / "calls.jsonl", "a") as log:
        log.write(json.dumps([tool, *argv]) + "\n")
    root = Path(os.environ["STANDIN_NODE_ROOT"])
    try:
        if tool == "kubeadm":
            kubeadm(root, folder, argv)
        elif tool == "crictl":
            crictl(folder, argv)
        elif tool in ("apt-get", "apt-mark"):
            apt(root, tool, argv)
        elif tool == "kubectl" and "get" in argv:
            print("False" if (folder / "not-ready").exists() else "True", end="")
    except Failed as error:
        print(error, file=sys.stderr)
        return 1
    return 0


def crictl(folder: Path, argv: list[str]) -> None:
    """`crictl --runtime-endpoint E inspecti -q IMAGE` and `crictl --runtime-endpoint E pull
    IMAGE`. inspecti fails for an image the runtime lacks, with the words of kubernetes-sigs/
    cri-tools cmd/crictl/image.go ("no such image %q present"). What pull prints, on success and
    when the registry cannot be reached, is modelled on crictl's and containerd's messages but was
    not read from their source: the agent reads only the exit status and records the text."""
    verb, image = argv[2], argv[-1]
    held = folder / "images"
    present = held.read_text().split() if held.exists() else []
    if verb == "inspecti" and image not in present:
        raise Failed(f'E1203 00:00:00.000000 1 crictl.go] no such image "{image}" present')
    if verb == "pull":
        if _take_one(folder / "pull-fail-times"):
            host = image.split("/")[0]
            raise Failed(
                f'E1203 00:00:00.000000 1 remote_image.go:180] "PullImage from image service failed" '
                f'err="rpc error: code = Unknown desc = failed to pull and unpack image \\"{image}\\": '
                f'failed to resolve reference: dial tcp: lookup {host}: Temporary failure in name resolution"'
            )
        held.write_text("".join(f"{line}\n" for line in [*present, image]))
        print(f"Image is up to date for sha256:{hashlib.sha256(image.encode()).hexdigest()}")


def kubeadm(root: Path, folder: Path, argv: list[str]) -> None:
    verb = argv[0] if argv else ""
    if argv[:2] == ["certs", "check-expiration"]:
        check_expiration(root)
    elif argv[:2] == ["upgrade", "apply"]:
        upgrade_apply(root, folder, argv[2].removeprefix("v"))
    elif argv[:2] == ["upgrade", "node"]:
        upgrade_node(root, folder)
    elif argv[:3] == ["certs", "renew", "all"]:
        renew_all(root, folder)
    elif verb == "reset":
        reset(root, folder)
    elif verb in ("init", "join"):
        config = _documents(Path(argv[argv.index("--config") + 1]))
        if verb == "init":
            init(root, folder, _ignored(argv))
        elif "controlPlane" in config["JoinConfiguration"]:
            join_control_plane(root, folder, config["JoinConfiguration"])
        else:
            join_worker(root, folder, config["JoinConfiguration"])


def init(root: Path, folder: Path, ignored: Collection[str] = ()) -> None:
    """`kubeadm init`: preflight, certs, kubeconfig, etcd and control-plane manifests,
    kubelet-start, then the wait for the control plane, where a Pi's first init usually fails."""
    _preflight(_init_node_checks(root), ignored=ignored)
    _record_cas(root, folder, "init")
    print(f'[certs] Using certificateDir folder "/{PKI}"')
    for name in CAS:  # cmd/kubeadm/app/cmd/phases/init/certs.go runCAPhase
        if (root / PKI / f"{name}.crt").exists() and (root / PKI / f"{name}.key").exists():
            print(f"[certs] Using existing {name} certificate authority")
        elif (root / PKI / f"{name}.crt").exists() and name != "etcd/ca":
            # a certificate without its key is an external CA, which needs every leaf
            # certificate made beforehand (cmd/kubeadm/app/cmd/init.go newInitData)
            which = "front-proxy CA" if name == "front-proxy-ca" else "CA"
            raise Failed(
                f"invalid or incomplete external {which}: failure loading certificate for API server: "
                f"couldn't load the certificate file /{PKI}/apiserver.crt: open /{PKI}/apiserver.crt: "
                f"no such file or directory\n{PREFLIGHT_TRAILER.splitlines()[1]}"
            )
        else:
            print(f'[certs] Generating "{name}" certificate and key')
            _write_new_ca(root / PKI, name)
    if (root / PKI / "sa.key").exists():
        print('[certs] Using the existing "sa" key')
    else:
        print('[certs] Generating "sa" key and public key')
        _write(root / PKI / "sa.key", _key_pem(ec.generate_private_key(ec.SECP256R1())), 0o600)
        _write(root / PKI / "sa.pub", b"stand-in sa.pub\n")
    _write_leaf_certificates(root, [*LEAVES])
    _write(root / KUBERNETES / "kubelet.conf", b"stand-in kubelet.conf\n", 0o600)
    _start_control_plane(root)
    # cmd/kubeadm/app/cmd/phases/init/waitcontrolplane.go (1.31 on)
    _wait(folder, '[wait-control-plane] Waiting for the kubelet to boot up the control plane as static Pods '
          f'from directory "/{MANIFESTS}"',
          "error execution phase wait-control-plane: could not initialize a Kubernetes cluster")  # fmt: skip
    print("kubeadm join 10.0.0.1:6443 --token abcdef.0123456789abcdef  # stand-in output")


def join_control_plane(root: Path, folder: Path, join: dict[str, Any]) -> None:
    # cmd/kubeadm/app/cmd/phases/join/preflight.go: the node checks, discovery, then those of an init
    _preflight(_join_node_checks(root, control_plane=True))
    _discover(folder, join)
    _preflight(_init_node_checks(root), announce=False)
    name = join["nodeRegistration"]["name"]
    missing = [
        f"{failure}: couldn't load the {'private key' if name.endswith('.key') else 'certificate'} file "
        f"/{PKI / name}: open /{PKI / name}: no such file or directory"
        for name, failure in SHARED_CERTIFICATES.items()
        if not (root / PKI / name).exists()
    ]
    if missing:  # the words of join/preflight.go; several failures are one aggregate, in brackets
        listed = missing[0] if len(missing) == 1 else f"[{', '.join(missing)}]"
        raise Failed(
            "error execution phase preflight: \nOne or more conditions for hosting a new control plane "
            f"instance is not satisfied.\n\n{listed}\n\nPlease ensure that:\n"
            "* The cluster has a stable controlPlaneEndpoint address.\n"
            "* The certificates that must be shared among control plane instances are provided.\n"
        )
    _record_cas(root, folder, "join-control-plane")
    _write_leaf_certificates(root, [name for name in LEAVES if name != "super-admin.conf"])
    _write(root / KUBERNETES / "kubelet.conf", b"stand-in kubelet.conf\n", 0o600)
    _refuse_a_ready_namesake(folder, name)  # kubelet-start comes after control-plane-prepare
    _add_etcd_learner(folder)
    _start_control_plane(root)
    _wait(folder, "[etcd] Waiting for the new etcd member to join the cluster. This can take up to 40s",
          "error execution phase control-plane-join/etcd: etcdserver: request timed out")  # fmt: skip


def join_worker(root: Path, folder: Path, join: dict[str, Any]) -> None:
    name = join["nodeRegistration"]["name"]
    _preflight(_join_node_checks(root, control_plane=False))
    _discover(folder, join)
    # discovery: the cluster-info CA, checked against caCertHashes, is written for the kubelet
    _write(root / PKI / "ca.crt", (root / "etc/picluster/cluster-ca.crt").read_bytes())
    bootstrap = root / KUBERNETES / "bootstrap-kubelet.conf"
    _write(bootstrap, b"stand-in bootstrap-kubelet.conf\n", 0o600)
    try:  # phases/join/kubelet.go removes the bootstrap kubeconfig however the phase ends
        _refuse_a_ready_namesake(folder, name)
        _write(root / KUBELET_DIR / "config.yaml", b"# stand-in kubelet configuration\n")
        # waitForTLSBootstrappedClient polls until its context times out
        _wait(folder, "[kubelet-start] Waiting for the kubelet to perform the TLS Bootstrap",
              "error execution phase kubelet-start: context deadline exceeded")  # fmt: skip
        _write(root / KUBERNETES / "kubelet.conf", b"stand-in kubelet.conf\n", 0o600)
    finally:
        bootstrap.unlink()


def apt(root: Path, tool: str, argv: list[str]) -> None:
    """apt-mark hold/unhold and apt-get install PACKAGE=VERSION-*, kept in a file on the node as
    dpkg keeps its database: apt refuses to change a held package ("E: Held packages were changed
    and -y was used without --allow-change-held-packages", apt-private/private-install.cc)."""
    database = root / "var/lib/dpkg/standin-packages.json"
    known = json.loads(database.read_text()) if database.exists() else {"versions": {}, "held": []}
    if tool == "apt-mark" and argv[0] in ("hold", "unhold"):
        held = set(known["held"])
        known["held"] = sorted(held | set(argv[1:]) if argv[0] == "hold" else held - set(argv[1:]))
    elif tool == "apt-get" and argv[0] == "install":
        wanted = dict(arg.split("=", 1) for arg in argv[1:] if "=" in arg)
        if set(wanted) & set(known["held"]):
            raise Failed(
                "E: Held packages were changed and -y was used without --allow-change-held-packages."
            )
        known["versions"].update({package: version.removesuffix("-*") for package, version in wanted.items()})
    else:
        return
    _write(database, json.dumps(known).encode())


def installed_version(root: Path, package: str) -> str | None:
    database = root / "var/lib/dpkg/standin-packages.json"
    return json.loads(database.read_text())["versions"].get(package) if database.exists() else None


def upgrade_apply(root: Path, folder: Path, version: str) -> None:
    """`kubeadm upgrade apply vX.Y.Z --yes` (cmd/kubeadm/app/cmd/upgrade/apply.go,
    phases/upgrade/policy.go, staticpods.go, postupgrade.go): refused beyond kubeadm's own
    release; each static pod's manifest backed up to /etc/kubernetes/tmp/kubeadm-backup-manifests-*
    and replaced, the certificates renewed, the kubelet's config backed up and rewritten; the
    release the cluster now runs is what `upgrade node` reads from the cluster (cluster-version)."""
    own = installed_version(root, "kubeadm")
    if own is None or _release(own) < _release(version):
        raise Failed(
            "[upgrade/version] FATAL: the --version argument is invalid due to these errors:\n\n\t- "
            f'Specified version to upgrade to "v{version}" is higher than the kubeadm version "v{own}". '
            "Upgrade kubeadm first using the tool you used to install kubeadm"
        )
    _upgrade_control_plane(root, version)
    (folder / "cluster-version").write_text(version)
    print(f'[upgrade] SUCCESS! A control plane node of your cluster was upgraded to "v{version}".')


def upgrade_node(root: Path, folder: Path) -> None:
    """`kubeadm upgrade node` (cmd/kubeadm/app/cmd/upgrade/node.go): the release comes from the
    cluster's ClusterConfiguration; a control plane's static pods and certificates as `apply`
    does them, every node's kubelet config."""
    version = (folder / "cluster-version").read_text()
    if (root / MANIFESTS / "kube-apiserver.yaml").exists():
        _upgrade_control_plane(root, version)
    else:
        _rewrite_kubelet_config(root, version)
    print("[upgrade] The configuration for this node was successfully upgraded!")


def _upgrade_control_plane(root: Path, version: str) -> None:
    backup = root / KUBERNETES / f"tmp/kubeadm-backup-manifests-{datetime.now(UTC):%Y-%m-%d-%H-%M-%S}"
    for name in CONTROL_PLANE_MANIFESTS:
        new = f"# stand-in static pod {name} v{version}\n".encode()
        current = root / MANIFESTS / name
        if current.read_bytes() == new:
            print(
                f"[upgrade/staticpods] current and new manifests of {name[:-5]} are equal, skipping upgrade"
            )
            continue
        backup.mkdir(parents=True, exist_ok=True)
        current.rename(backup / name)
        _write(current, new, 0o600)
    renewed = [name for name in LEAVES if _leaf(root, name) is not None]
    _write_leaf_certificates(root, renewed)
    _rewrite_kubelet_config(root, version)


def _rewrite_kubelet_config(root: Path, version: str) -> None:
    config = root / KUBELET_DIR / "config.yaml"
    kept = root / KUBERNETES / "tmp/kubeadm-kubelet-config" / "config.yaml"
    print(f"[upgrade] Backing up kubelet config file to /{kept.parent.relative_to(root)}")
    _write(kept, config.read_bytes())
    _write(config, f"# stand-in kubelet configuration v{version}\n".encode())


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def check_expiration(root: Path) -> None:
    """`kubeadm certs check-expiration -o json`: cmd/kubeadm/app/cmd/certs.go newCmdCertsExpiration
    prints output.kubeadm.k8s.io/v1alpha3 CertificateExpirationInfo (apis/output/v1alpha3/
    types.go): each certificate's name, expirationDate (RFC 3339, UTC), residualTime (seconds),
    caName, externallyManaged and missing, then the CAs likewise."""
    now = datetime.now(UTC)

    def entry(name: str, cert: x509.Certificate | None, ca: str | None) -> dict[str, Any]:
        expires = cert.not_valid_after_utc if cert else datetime.min.replace(tzinfo=UTC)
        listed = {"name": name, "expirationDate": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
                  "residualTime": max(0, int((expires - now).total_seconds())) if cert else 0,
                  "externallyManaged": False, "missing": cert is None}  # fmt: skip
        return {**listed, "caName": ca} if ca else listed

    info = {
        "kind": "CertificateExpirationInfo",
        "apiVersion": "output.kubeadm.k8s.io/v1alpha3",
        "certificates": [entry(name, _leaf(root, name), ca) for name, (_, ca, _) in LEAVES.items()],
        "certificateAuthorities": [
            entry(ca.replace("/", "-"), _load(root / PKI / f"{ca}.crt"), None) for ca in CAS
        ],
    }
    print(json.dumps(info, indent=4))


def renew_all(root: Path, folder: Path) -> None:
    """`kubeadm certs renew all`: every certificate kubeadm manages signed anew by its CA for a
    year (phases/certs/renewal/manager.go RenewUsingLocalCA), with a line per certificate and the
    closing advice of cmd/certs.go. Upstream keeps each certificate's subject and SANs; the
    stand-in's carry only their name as subject, made the same way again, and no SANs."""
    print("[renew] Reading configuration from the cluster...")
    for name, (_, _, long_name) in LEAVES.items():
        if _leaf(root, name) is None:
            continue
        _write_leaf_certificates(root, [name])
        print(f"{long_name} renewed")
    print(
        "\nDone renewing certificates. You must restart the kube-apiserver, kube-controller-manager, "
        "kube-scheduler and etcd, so that they can use the new certificates."
    )


def _write_leaf_certificates(root: Path, names: list[str]) -> None:
    """Certificates (or kubeconfigs with a client certificate) signed by their CA for kubeadm's
    year (constants.go CertificateValidityPeriod), from now."""
    now = datetime.now(UTC)
    for name in names:
        path, ca, _ = LEAVES[name]
        ca_cert = x509.load_pem_x509_certificate((root / PKI / f"{ca}.crt").read_bytes())
        ca_key = serialization.load_pem_private_key((root / PKI / f"{ca}.key").read_bytes(), None)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=365))
            .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
        )
        pem = cert.public_bytes(serialization.Encoding.PEM)
        if path.suffix == ".conf":
            user = {"client-certificate-data": base64.b64encode(pem).decode(),
                    "client-key-data": base64.b64encode(_key_pem(key)).decode()}  # fmt: skip
            kubeconfig = {"apiVersion": "v1", "kind": "Config", "users": [{"name": name, "user": user}]}
            _write(root / KUBERNETES / path, yaml.safe_dump(kubeconfig).encode(), 0o600)
        else:
            _write(root / KUBERNETES / path, pem)
            _write(root / KUBERNETES / path.with_suffix(".key"), _key_pem(key), 0o600)


def _leaf(root: Path, name: str) -> x509.Certificate | None:
    path = root / KUBERNETES / LEAVES[name][0]
    if path.suffix != ".conf":
        return _load(path)
    if not path.exists():
        return None
    user = yaml.safe_load(path.read_text())["users"][0]["user"]
    return x509.load_pem_x509_certificate(base64.b64decode(user["client-certificate-data"]))


def _load(path: Path) -> x509.Certificate | None:
    return x509.load_pem_x509_certificate(path.read_bytes()) if path.exists() else None


def _refuse_a_ready_namesake(folder: Path, name: str) -> None:
    """cmd/kubeadm/app/cmd/phases/join/kubelet.go, runKubeletStartJoinPhase: before the kubelet
    starts, a Node of this name whose Ready condition is True ends the join; one NotReady or
    Unknown does not (the new kubelet takes it over, labels, taints and all)."""
    ready = folder / "ready-nodes"
    if ready.exists() and name in ready.read_text().split():
        raise Failed(
            f'error execution phase kubelet-start: a Node with name "{name}" and status "Ready" already '
            "exists in the cluster. You must delete the existing Node or change the name of this new "
            "joining Node\n"
            f"{PREFLIGHT_TRAILER.splitlines()[1]}"
        )


def _add_etcd_learner(folder: Path) -> None:
    """Phase control-plane-join/etcd adds the new member as a learner, promoted once it has caught
    up (CreateStackedEtcdStaticPodManifestFile in cmd/kubeadm/app/phases/etcd/local.go). etcd
    holds one learner at a time: while another control plane's is not promoted, MemberAddAsLearner
    fails with etcd's ErrGRPCTooManyLearners, which kubeadm retries for timeouts.etcdAPICall
    (cmd/kubeadm/app/util/etcd/etcd.go) and then gives up with; the stand-in gives up at once."""
    if (folder / "etcd-learner").exists():
        raise Failed(
            "error execution phase control-plane-join/etcd: error creating local etcd static pod manifest "
            f"file: etcdserver: too many learner members in cluster\n{PREFLIGHT_TRAILER.splitlines()[1]}"
        )


def reset(root: Path, folder: Path) -> None:
    """`kubeadm reset -f`: phases remove-etcd-member and cleanup-node
    (cmd/kubeadm/app/cmd/phases/reset/removeetcdmember.go, cleanupnode.go). Directories keep
    themselves and lose their contents (CleanDir); /etc/cni/net.d is left alone."""
    print("[preflight] Running pre-flight checks")
    _clean(root / ETCD_DATA)  # printed even when there was nothing (IsDirEmpty: false if missing)
    print(f"[reset] Deleted contents of the etcd data directory: /{ETCD_DATA}")
    print("[reset] Stopping the kubelet service")
    print(f'[reset] Unmounting mounted directories in "/{KUBELET_DIR}"')
    if _take_one(folder / "reset-fail-times"):  # cleanupnode.go returns before any folder is emptied
        raise Failed(f"error execution phase cleanup-node: failed to unmount directories in /{KUBELET_DIR}")
    folders = [MANIFESTS, KUBELET_DIR, PKI]
    print(f"[reset] Deleting contents of directories: [{' '.join(f'/{f}' for f in folders)}]")
    for relative in folders:
        _clean(root / relative)
    print(f"[reset] Deleting files: [{' '.join(f'/{KUBERNETES / name}' for name in RESET_FILES)}]")
    for name in RESET_FILES:
        (root / KUBERNETES / name).unlink(missing_ok=True)


def _init_node_checks(root: Path) -> list[str]:
    """cmd/kubeadm/app/preflight/checks.go RunInitNodeChecks, the checks on files: the
    manifests must not exist, the local etcd's data directory must be empty."""
    etcd = (
        [f"[ERROR DirAvailable--var-lib-etcd]: /{ETCD_DATA} is not empty"]
        if _has_contents(root / ETCD_DATA)
        else []
    )
    return [*(_file_available(root, MANIFESTS / name) for name in CONTROL_PLANE_MANIFESTS), *etcd]


def _join_node_checks(root: Path, control_plane: bool) -> list[str]:
    """RunJoinNodeChecks: no kubelet kubeconfigs left by an earlier membership, and on a worker
    no CA certificate (the manifests folder is no longer checked since 1.23, PR #104942)."""
    paths = [KUBERNETES / "kubelet.conf", KUBERNETES / "bootstrap-kubelet.conf"]
    return [_file_available(root, path) for path in [*paths, *([] if control_plane else [PKI / "ca.crt"])]]


def _file_available(root: Path, path: Path) -> str:
    """FileAvailableCheck, named as kubeadm names it (the path with '/' made '-'); '' when fine."""
    if not (root / path).exists():
        return ""
    return f"[ERROR FileAvailable-{'-'.join(('', *path.parts))}]: /{path} already exists"


def _discover(folder: Path, join: dict[str, Any]) -> None:
    """Token discovery, in the join's preflight phase (cmd/kubeadm/app/discovery/token/token.go
    getClusterInfo): it polls kube-public/cluster-info for a `jws-kubeconfig-<token id>` key, which
    the bootstrapsigner writes only for a token Secret the cluster has (an expired one is deleted
    by the tokencleaner), until the discovery timeout; then discovery.go For() wraps the last error."""
    known = folder / "cluster-tokens"
    token_id = join["discovery"]["bootstrapToken"]["token"].split(".")[0]
    if not known.exists() or token_id in known.read_text().split():
        return
    timeout = folder / "discovery-timeout"
    time.sleep(float(timeout.read_text()) if timeout.exists() else DISCOVERY_TIMEOUT_S)
    raise Failed(
        "error execution phase preflight: couldn't validate the identity of the API Server: could not "
        f'find a JWS signature in the cluster-info ConfigMap for token ID "{token_id}"\n'
        + PREFLIGHT_TRAILER.splitlines()[1]
    )


def _ignored(argv: list[str]) -> set[str]:
    """--ignore-preflight-errors, as kubeadm reads it: comma-separated, any case
    (cmd/kubeadm/app/apis/kubeadm/validation/validation.go ValidateIgnorePreflightErrors)."""
    values = [arg.split("=", 1)[1] for arg in argv if arg.startswith("--ignore-preflight-errors=")]
    return {name.strip().lower() for value in values for name in value.split(",") if name.strip()}


def _preflight(errors: list[str], announce: bool = True, ignored: Collection[str] = ()) -> None:
    """checks.go RunChecks: an ignored check's error (by its name in any case, or "all") is a
    warning on stderr; the rest fail together."""
    if announce:
        print("[preflight] Running pre-flight checks")
    for error in [error for error in errors if error]:
        name = error.split("]", 1)[0].removeprefix("[ERROR ")
        if "all" in ignored or name.lower() in ignored:
            print(f"\t{error.replace('[ERROR ', '[WARNING ', 1)}", file=sys.stderr)
            errors = [other for other in errors if other != error]
    found = [error for error in errors if error]
    if found:
        raise Failed(
            "error execution phase preflight: [preflight] Some fatal errors occurred:\n"
            + "".join(f"\t{error}\n" for error in found)
            + PREFLIGHT_TRAILER
        )


def _start_control_plane(root: Path) -> None:
    for name in CONTROL_PLANE_MANIFESTS:
        _write(root / MANIFESTS / name, f"# stand-in static pod {name}\n".encode(), 0o600)
    _write(root / KUBELET_DIR / "config.yaml", b"# stand-in kubelet configuration\n")
    if not (root / ETCD_DATA / "member").exists():  # etcd starts on a restored member as it is
        _write(root / ETCD_DATA / "member/snap/db", b"stand-in etcd data\n", 0o600)


def _wait(folder: Path, waiting: str, failure: str) -> None:
    print(waiting)
    if (folder / "hang").exists():
        time.sleep(600)
    if _take_one(folder / "fail-times"):
        raise Failed(failure)


def _take_one(counter: Path) -> bool:
    """True, counting one down, while a steering file holds a number above zero."""
    left = int(counter.read_text()) if counter.exists() else 0
    if left <= 0:
        return False
    counter.write_text(str(left - 1))
    return True


def _record_cas(root: Path, folder: Path, verb: str) -> None:
    found = {
        name: hashlib.sha256((root / PKI / name).read_bytes()).hexdigest()
        for name in ("ca.crt", "ca.key", "etcd/ca.key", "front-proxy-ca.key", "sa.key")
        if (root / PKI / name).exists()
    }
    with open(folder / "cas.jsonl", "a") as log:
        log.write(json.dumps({"verb": verb, "found": found}) + "\n")


def _write_new_ca(folder: Path, name: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    _write(folder / f"{name}.crt", cert.public_bytes(serialization.Encoding.PEM))
    _write(folder / f"{name}.key", _key_pem(key), 0o600)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _documents(path: Path) -> dict[str, Any]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(path.read_text()) if doc}


def _has_contents(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())


def _clean(folder: Path) -> None:
    if not folder.is_dir():
        return
    for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        path.rmdir() if path.is_dir() and not path.is_symlink() else path.unlink()


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], Path(sys.argv[2]), sys.argv[3:]))
