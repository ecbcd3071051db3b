"""Kubernetes helpers of the k3s target.

``manifests`` and ``health`` are pure logic; ``client`` is the only module importing
kubernetes_asyncio (~48 MB RSS), so importing this package alone stays cheap.
"""
