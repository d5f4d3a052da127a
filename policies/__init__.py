"""Pure statement policy: classification and verdicts. No I/O, no imports from proxy/ or admin_api/."""
