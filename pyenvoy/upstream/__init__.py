"""
Upstreams: clusters, hosts, load balancers and upstream connections, used
by every terminal filter through one L{ClusterManager}.
"""

from pyenvoy.upstream.cluster_manager import ClusterManager, ConnectStatus

__all__ = ["ClusterManager", "ConnectStatus"]
