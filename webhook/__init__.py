"""istio-spiffe-webhook: Istio sidecars with rotating certificates from a SPIFFE Workload API."""

__version__ = "0.1.0"
