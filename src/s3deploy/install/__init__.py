"""The Install step: plan, copy, permissions, ACLs, the cleanup list, release modes; folders reached
through descriptors (``dirs``). No imports here: ``appspec`` imports ``install.acl``, and ``install``
imports ``appspec``."""
