"""The `loramem` command line: the top floor, it may import every package of the project.

Nothing in the core (`loramem`), the gateway, the router, the trainer or the evaluation
imports it; they start its commands as processes (`python -m cli <command>`).
"""
