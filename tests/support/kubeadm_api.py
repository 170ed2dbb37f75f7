"""The fields kubeadm's config API accepts, transcribed from the upstream Go types.

Source: kubernetes/kubernetes at commit 1329935739c3aa007d23cb9a4dadfee9d59ff79b,
cmd/kubeadm/app/apis/kubeadm/v1beta4/types.go (json tags), and
cmd/kubeadm/app/apis/bootstraptoken/v1/types.go for BootstrapToken. kubeadm decodes strictly, so a
field outside these is an error on the node, far from where it was written.

A dict maps a field to the fields of its value (None: a scalar or a list of scalars); a list
holding one dict describes a list of objects.
"""

from __future__ import annotations

from typing import Any

API_ENDPOINT = {"advertiseAddress": None, "bindPort": None}
ARG = [{"name": None, "value": None}]
NODE_REGISTRATION = {
    "name": None,
    "criSocket": None,
    "taints": [{"key": None, "value": None, "effect": None, "timeAdded": None}],
    "kubeletExtraArgs": ARG,
    "ignorePreflightErrors": None,
    "imagePullPolicy": None,
    "imagePullSerial": None,
}
TIMEOUTS = dict.fromkeys(
    [
        "controlPlaneComponentHealthCheck",
        "kubeletHealthCheck",
        "kubernetesAPICall",
        "etcdAPICall",
        "tlsBootstrap",
        "discovery",
        "upgradeManifests",
    ]
)
TYPE_META = {"apiVersion": None, "kind": None}
CONTROL_PLANE_COMPONENT = {"extraArgs": ARG, "extraVolumes": [dict], "extraEnvs": [dict]}

FIELDS: dict[str, dict[str, Any]] = {
    "InitConfiguration": {
        **TYPE_META,
        "bootstrapTokens": [
            {"token": None, "description": None, "ttl": None, "expires": None, "usages": None, "groups": None}
        ],
        "dryRun": None,
        "nodeRegistration": NODE_REGISTRATION,
        "localAPIEndpoint": API_ENDPOINT,
        "certificateKey": None,
        "skipPhases": None,
        "patches": {"directory": None},
        "timeouts": TIMEOUTS,
    },
    "ClusterConfiguration": {
        **TYPE_META,
        "etcd": {"local": dict, "external": dict},
        "networking": {"serviceSubnet": None, "podSubnet": None, "dnsDomain": None},
        "kubernetesVersion": None,
        "controlPlaneEndpoint": None,
        "apiServer": {**CONTROL_PLANE_COMPONENT, "certSANs": None},
        "controllerManager": CONTROL_PLANE_COMPONENT,
        "scheduler": CONTROL_PLANE_COMPONENT,
        "dns": {"imageRepository": None, "imageTag": None, "disabled": None},
        "proxy": {"disabled": None},
        "certificatesDir": None,
        "imageRepository": None,
        "featureGates": dict,
        "clusterName": None,
        "encryptionAlgorithm": None,
        "certificateValidityPeriod": None,
        "caCertificateValidityPeriod": None,
    },
    "JoinConfiguration": {
        **TYPE_META,
        "dryRun": None,
        "nodeRegistration": NODE_REGISTRATION,
        "caCertPath": None,
        "discovery": {
            "bootstrapToken": {
                "token": None,
                "apiServerEndpoint": None,
                "caCertHashes": None,
                "unsafeSkipCAVerification": None,
            },
            "file": {"kubeConfigPath": None},
            "tlsBootstrapToken": None,
        },
        "controlPlane": {"localAPIEndpoint": API_ENDPOINT, "certificateKey": None},
        "skipPhases": None,
        "patches": {"directory": None},
        "timeouts": TIMEOUTS,
    },
    # kubelet.config.k8s.io/v1beta1 has far more fields; these are the ones picluster writes.
    "KubeletConfiguration": {**TYPE_META, "cgroupDriver": None},
}

ENCRYPTION_ALGORITHMS = {"ECDSA-P256", "RSA-2048", "RSA-3072", "RSA-4096"}


def unknown_fields(value: Any, schema: Any, path: str = "") -> list[str]:
    """Paths in value that schema does not allow."""
    if schema is None or schema is dict:
        return []
    if isinstance(schema, list):
        return [
            bad
            for index, item in enumerate(value)
            for bad in unknown_fields(item, schema[0], f"{path}[{index}]")
        ]
    found = []
    for key, item in value.items():
        where = f"{path}.{key}" if path else key
        if key not in schema:
            found.append(where)
        else:
            found.extend(unknown_fields(item, schema[key], where))
    return found
