"""The Install step: plan, copy, permissions, ACLs, the cleanup list."""
