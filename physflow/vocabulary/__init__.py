"""physflow's ground floor: the words every layer shares (the workflow spec, a task's data).

It imports nothing of physflow but ``physflow.errors``, so that agents, adapters, dispatch and
serving can all speak it without knowing one another.
"""
