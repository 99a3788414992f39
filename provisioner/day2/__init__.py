"""Day-2 operations on a running cluster, one module per operation.

Each takes the cluster's run lock for what it changes, has a dry run built from the same code,
and runs its node work as a playbook of its own (provisioner/playbooks/<op>.yaml, through
bootstrap.phases.run_day2) with its own resume record.
"""
