"""A package, so that conftest.py's ``scope="package"`` cluster is torn down when these tests end.

Without this file pytest (8 and later) gives the folder a Dir node, not a Package, and a
package-scoped fixture falls back to the session: the second control plane, the kubelet,
containerd and kube-scheduler kept running beside every later test and were stopped only in the
teardown of the suite's last test.
"""
