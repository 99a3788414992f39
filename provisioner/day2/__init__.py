"""Day-2 operations on a running cluster, one module per operation.

Each takes the cluster's run lock for what it changes, says what it will do (a dry run built
from the same code), keeps etcd's quorum and the API available, and runs its node work as a
playbook of its own (provisioner/playbooks/<op>.yaml, through bootstrap.phases.run_day2) whose
resume record lets an interrupted run go on where it stopped.
"""
