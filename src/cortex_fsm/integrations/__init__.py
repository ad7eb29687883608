"""cortex_fsm as the routing and node-health policy of other gateways.

Each integration is an optional extra (``pip install 'cortex-fsm[litellm]'``)
and is imported by name (:mod:`cortex_fsm.integrations.litellm`); nothing in
the core or the drivers imports any of them.
"""
