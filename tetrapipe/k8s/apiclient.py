"""One way to reach the Kubernetes API server, for every watcher (pods, policies).

The kubeconfig named by ``--kubeconfig`` when given, the pod's service account inside a
cluster, otherwise the user's default kubeconfig (``~/.kube/config`` or ``$KUBECONFIG``).
"""

from __future__ import annotations

import os

from kubernetes_asyncio import client, config


async def api_client(kubeconfig: str = "") -> tuple[client.ApiClient, str]:
    """A client and the server's address (for logs and errors)."""
    conf = client.Configuration()
    if kubeconfig:
        await config.load_kube_config(config_file=kubeconfig, client_configuration=conf)
    elif os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=conf)
    else:
        await config.load_kube_config(client_configuration=conf)
    return client.ApiClient(configuration=conf), conf.host
