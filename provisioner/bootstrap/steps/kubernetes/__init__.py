"""Kubernetes with kubeadm, by concern: settings (what every step reads), control_plane (PKI,
kubelet, init, joins), token (the run's bootstrap token), endpoint (kube-vip, or haproxy with
keepalived) and vsphere (the cloud provider and CSI driver). The cluster network is steps/cni/,
the health check steps/health.py. Step names stay kubernetes.* whatever module holds them.
"""
