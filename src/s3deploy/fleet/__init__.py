"""Fleet rollouts (SPEC §10): hosts of a coordinated section deploy a revision at most ``max_concurrent``
at a time and stop after ``max_failures``, coordinated only through objects in the section's bucket
written with S3 conditional writes. See docs/fleet.md.

Modules: ``keys`` (where the objects live), ``records`` (their content, read strictly), ``policy`` (k,
leases, waits), ``probe`` (the conditional-write check), ``owned`` (a host's own objects), ``slots`` (one
LIST of control/, take, renew, free), ``held`` (a held slot), ``ledger`` (reports, failures, stop),
``rollout`` (the wait for a slot), ``view`` (``fleet status``), ``coordinator`` (the entry points).

Nothing is imported here: ``config.py`` imports ``fleet.policy`` and ``fleet.keys`` without loading S3.
"""
