"""The Kubernetes API as both the enricher (pod metadata) and the collector (podSelector and
containerSelector of policies) need it: this node's pods, listed and watched (watch.py), indexed by
pod UID and container id (pods.py)."""
