"""A kubeconfig a user keeps, with this cluster among others, as kubectl writes it."""

from __future__ import annotations

import base64
from pathlib import Path

from builder.secrets import store

OTHER_CA = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nMIIB...prod\n-----END CERTIFICATE-----\n").decode()

STALE_CERT = base64.b64encode(b"an old picluster certificate").decode()

MULTI_CLUSTER = f"""\
apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: {OTHER_CA}
    server: https://prod.example.com:6443
  name: prod
- cluster:
    certificate-authority-data: HOMELAB_CA
    server: https://192.168.50.10:6443
  name: homelab
- cluster:
    insecure-skip-tls-verify: true
    server: https://127.0.0.1:41235
  name: kind-dev
contexts:
- context:
    cluster: prod
    namespace: payments
    user: prod-admin
  name: prod
- context:
    cluster: homelab
    user: picluster-admin@homelab
  name: picluster-admin@homelab
- context:
    cluster: kind-dev
    extensions:
    - extension:
        last-update: Mon, 01 Dec 2025 09:00:00 UTC
        provider: minikube.sigs.k8s.io
      name: context_info
    user: kind-dev
  name: kind-dev
current-context: prod
extensions:
- extension:
    version: v1.34.0
  name: cluster_info
kind: Config
preferences:
  colors: true
users:
- name: prod-admin
  user:
    exec:
      apiVersion: client.authentication.k8s.io/v1beta1
      args:
      - eks
      - get-token
      - --cluster-name
      - prod
      command: aws
      env: null
      interactiveMode: IfAvailable
      provideClusterInfo: false
- name: picluster-admin@homelab
  user:
    client-certificate-data: {STALE_CERT}
    client-key-data: {STALE_CERT}
- name: kind-dev
  user:
    client-certificate-data: a2luZC1jZXJ0
    client-key-data: a2luZC1rZXk=
"""
"""Three clusters as `kubectl config view --flatten` writes them: one on EKS, this one with a
stale certificate from an earlier `picluster kubeconfig`, one kind cluster."""


def multi_cluster(site: Path) -> str:
    ca = store.load(site / ".picluster").ca.public_pem
    return MULTI_CLUSTER.replace("HOMELAB_CA", base64.b64encode(ca).decode())
