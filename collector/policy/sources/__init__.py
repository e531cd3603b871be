"""Policy sources beyond files and the control socket, each feeding the PolicyManager through a
PolicySet (policyset.py): TracingPolicy custom resources from the Kubernetes API (k8s.py) and a
policy document from an Open Policy Agent server (opa.py)."""
