"""Day-2 operations on a running cluster, one module each (repair.py: a node replaced in place).

Each holds the cluster's run lock, says what it will do (a dry run from the same code), keeps
etcd quorum and the API available, and resumes where an interrupted run stopped.
"""
