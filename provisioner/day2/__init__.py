"""Day-2 operations on a running cluster, one module per operation (each a lifecycle function
that runs its playbook from provisioner/playbooks/ through bootstrap.phases.run_day2)."""
